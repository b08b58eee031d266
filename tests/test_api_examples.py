"""Elemental's own documentation examples apply unchanged (rancher/elemental-docs examples/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from elemental_operator.api import ValidationError, kinds
from elemental_operator.store.sql import open_store

EXAMPLES = Path(__file__).parent / "data" / "elemental-examples"

# Refused on purpose — a Kubernetes API server refuses them too (names must be RFC 1123 subdomains):
EXPECTED_REFUSALS = {
    ("clusters__clusters-several-machinepools.yml", "selectorControlPlanes"),
    ("clusters__clusters-several-machinepools.yml", "selectorWorkers"),
    ("proxy__seedimage-proxy.yaml", "..."),  # a placeholder in the docs
}


def contains(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            contains(actual.get(k), v) for k, v in expected.items() if v is not None
        )
    return bool(actual == expected)


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in kinds():
                out.append((path.name, doc))
    return out


def test_there_are_examples_of_most_kinds() -> None:
    seen = {doc["kind"] for _, doc in documents()}
    assert {
        "MachineRegistration",
        "MachineInventorySelectorTemplate",
        "ManagedOSImage",
        "ManagedOSVersionChannel",
        "SeedImage",
    } <= seen


@pytest.mark.parametrize("name,doc", documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_example_applies_unchanged(name: str, doc: dict[str, Any], tmp_path: Path) -> None:
    key = (name, doc["metadata"]["name"])
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        if key in EXPECTED_REFUSALS:
            with pytest.raises(ValidationError, match="metadata.name"):
                store.create(doc)
            return
        created = store.create(doc)
        assert contains(created.get("spec"), doc.get("spec"))  # unchanged, plus CRD defaults
    finally:
        store.close()
