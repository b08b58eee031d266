"""Elemental's own manifests (tests/data/upstream-manifests) get the verdict upstream's CRDs give them.

The reference verdict does not come from our validator: upstream's openAPIV3Schema
(tests/data/upstream-crds) is turned into JSON Schema with the API server's rules for custom
resources (strict field validation: a field the schema does not declare is an error unless
``x-kubernetes-preserve-unknown-fields``; a nested ``type: object`` without properties keeps
nothing; nulls are pruned; a defaulted field is never missing) and checked by ``jsonschema``.
Each document is checked as written, with an unknown field added to each object it has, and with
each scalar swapped for a value of another type; ours must accept and refuse exactly the same.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from elemental_operator.api import ValidationError, kinds, validate

DATA = Path(__file__).parent / "data"
MANIFESTS = DATA / "upstream-manifests"
CRDS = DATA / "upstream-crds"


# The API server's own ObjectMeta rules (apimachinery validation): names are RFC 1123 subdomains,
# namespaces RFC 1123 labels, label values at most 63 characters of [A-Za-z0-9_.-].
_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "maxLength": 63,
                "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
            },
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def to_json_schema(node: dict[str, Any], path: str = "") -> dict[str, Any]:
    """One openAPIV3Schema node as the API server would judge it, in JSON Schema."""
    if path == ".metadata":
        return OBJECT_META
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    out: dict[str, Any] = {}
    if "anyOf" in node:
        out["anyOf"] = [{"type": [a["type"], "null"]} for a in node["anyOf"]]
    elif "type" in node:
        out["type"] = [node["type"], "null"]  # a null is pruned, never a type error
    for key in ("enum", "pattern", "maxLength", "minLength", "minimum", "maximum", "maxItems", "minItems"):
        if key in node:
            out[key] = node[key]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    props = node.get("properties")
    if props is not None:
        out["properties"] = {k: to_json_schema(v, f"{path}.{k}") for k, v in props.items()}
        out["required"] = [k for k in node.get("required", []) if "default" not in props.get(k, {})]
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"], path + "{}")
    elif node.get("type") == "object" and not preserve:
        out["additionalProperties"] = False  # strict: undeclared fields are errors
    if isinstance(node.get("items"), dict):
        out["items"] = to_json_schema(node["items"], path + "[]")
    return out


@functools.cache
def reference(kind: str) -> jsonschema.protocols.Validator:
    for path in CRDS.glob("elemental.cattle.io_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            schema = to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            cls = jsonschema.validators.validator_for(schema)
            return cls(schema)  # type: ignore[no-any-return]
    raise KeyError(kind)


def upstream_accepts(doc: dict[str, Any]) -> bool:
    return bool(reference(doc["kind"]).is_valid(doc))


def we_accept(doc: dict[str, Any]) -> bool:
    try:
        validate(doc)
    except ValidationError:
        return False
    return True


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.rglob("*.y*ml")):
        for n, doc in enumerate(yaml.safe_load_all(path.read_text()), 1):
            if isinstance(doc, dict) and doc.get("kind") in kinds() and not kinds()[doc["kind"]].core:
                out.append((f"{path.relative_to(MANIFESTS)}#{n}", doc))
    return out


def variants(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The document, plus one unknown field per object and one wrong-typed value per scalar."""
    yield "as written", doc
    spots: list[tuple[list[Any], Any]] = []

    def walk(v: Any, trail: list[Any]) -> None:
        if trail[:1] == ["metadata"]:
            return
        spots.append((trail, v))
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(sub, [*trail, k])
        elif isinstance(v, list):
            for i, sub in enumerate(v):
                walk(sub, [*trail, i])

    walk(doc, [])
    for trail, value in spots:
        if isinstance(value, dict) and trail:
            yield f"unknown field under {trail}", _put(doc, [*trail, "zzUnknown"], "x")
        elif not isinstance(value, dict | list) and trail and trail[-1] not in ("apiVersion", "kind"):
            other: Any = 7 if isinstance(value, str) else ("seven" if not isinstance(value, bool) else "true")
            yield f"{other!r} at {trail}", _put(doc, trail, other)


def _put(doc: dict[str, Any], trail: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    cur: Any = out
    for key in trail[:-1]:
        cur = cur[key]
    cur[trail[-1]] = value
    return out


DOCS = documents()


def test_the_corpus_is_elementals() -> None:
    # docs/*.md YAML blocks and examples/ of rancher/elemental-docs (README.md there)
    assert len(DOCS) >= 60
    assert {d["kind"] for _, d in DOCS} >= {
        "MachineRegistration",
        "SeedImage",
        "ManagedOSImage",
        "ManagedOSVersionChannel",
        "MachineInventorySelectorTemplate",
    }


@pytest.mark.parametrize("name,doc", DOCS, ids=[n for n, _ in DOCS])
def test_upstream_verdict(name: str, doc: dict[str, Any]) -> None:
    disagree = []
    for what, variant in variants(doc):
        up, ours = upstream_accepts(variant), we_accept(variant)
        if up != ours:
            disagree.append(
                f"{what}: upstream {'accepts' if up else 'refuses'}, we {'accept' if ours else 'refuse'}"
            )
    assert not disagree, "\n".join(disagree)


def test_the_reference_is_not_blind() -> None:
    """The JSON Schema reference refuses what the API server refuses, so agreement means something."""
    seed = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "SeedImage",
        "metadata": {"name": "s"},
        "spec": {"registrationRef": {"name": "r"}},
    }
    assert upstream_accepts(seed)
    assert not upstream_accepts(_put(seed, ["spec", "typo"], 1))
    assert not upstream_accepts(_put(seed, ["spec", "type"], "vmdk"))
    assert not upstream_accepts(_put(seed, ["spec", "size"], "lots"))
    assert upstream_accepts(_put(seed, ["spec", "size"], 6442450944))
    assert not upstream_accepts({**seed, "spec": {}})  # registrationRef is required
    tpl = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventorySelectorTemplate",
        "metadata": {"name": "t"},
        "spec": {"template": {"metadata": {"labels": {"a": "b"}}}},
    }
    assert not upstream_accepts(tpl)  # nested metadata keeps nothing: strict refuses its fields
