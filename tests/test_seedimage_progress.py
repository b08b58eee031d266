"""A SeedImage build's steps show in its SeedImageReady condition while it runs (issue 13 item 3).

The real controller runs a build command that reports two steps through the progress file the
default builder (iso.repack) writes, each held until the test releases it, so every step is seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_fixtures import run_until

from elemental_operator.context import OperatorContext
from elemental_operator.controllers import Manager
from elemental_operator.controllers.base import condition_true, get_condition
from elemental_operator.controllers.machineregistration import MachineRegistrationController
from elemental_operator.controllers.seedimage import SeedImageController
from elemental_operator.store.sql import SqlStore, open_store

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}", poll_interval=0.02)
    yield s
    s.close()


def test_build_steps_are_in_the_condition(store: SqlStore, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    cmd = (
        'sh -c \'echo "pulling the base" > {progress}; '
        f"while [ ! -f {gate}1 ]; do sleep 0.05; done; "
        'echo "repacking the ISO" > {progress}; '
        f"while [ ! -f {gate}2 ]; do sleep 0.05; done; "
        "cp {registration} {output}'"
    )
    ctx = OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)
    mgr = Manager(
        ctx, [MachineRegistrationController(ctx), SeedImageController(ctx, tmp_path / "state", cmd)]
    )
    store.create(
        {"apiVersion": API, "kind": "MachineRegistration", "metadata": {"name": "reg", "namespace": NS}}
    )
    store.create(
        {
            "apiVersion": API,
            "kind": "SeedImage",
            "metadata": {"name": "s1", "namespace": NS},
            "spec": {"registrationRef": {"name": "reg", "namespace": NS}},
        }
    )

    def message() -> str:
        return str((get_condition(store.get("SeedImage", NS, "s1"), "SeedImageReady") or {}).get("message"))

    run_until(mgr, lambda: message() == "pulling the base", timeout=30)
    si = store.get("SeedImage", NS, "s1")
    assert si["status"]["state"] == "Started"
    assert get_condition(si, "SeedImageReady")["reason"] == "SeedImageBuildOngoing"  # type: ignore[index]
    gate.with_name("gate1").touch()
    run_until(mgr, lambda: message() == "repacking the ISO", timeout=30)
    gate.with_name("gate2").touch()
    run_until(mgr, lambda: condition_true(store.get("SeedImage", NS, "s1"), "SeedImageReady"), timeout=30)
    assert message() == "seed image iso available"


def test_failure_message_is_the_builders_error_line() -> None:
    from elemental_operator.controllers.seedimage import _failure

    log = "[ 0.1s] resolving r\niso.repack: error: cannot pull base image r: HTTP 404\n  hint: check it\n"
    assert _failure(1, log) == "cannot pull base image r: HTTP 404 (hint: check it)"
    log = "iso.repack: error: xorriso -indev b failed (exit 5):\nlibisoburn: no ISO\n  hint: readable\n"
    assert _failure(1, log) == "xorriso -indev b failed (exit 5): libisoburn: no ISO (hint: readable)"
    assert _failure(3, "no xorriso here\n") == "build exited 3: no xorriso here\n"
