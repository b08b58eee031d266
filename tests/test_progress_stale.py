"""InstallProgress goes Stale when a machine stops reporting (power cut) and clears on the next
report: the MachineInventory controller against the real stores (issue 11 item 8)."""

# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from operator_fixtures import postgres_server, run_until, store, store_url  # noqa: F401

from elemental_operator.context import OperatorContext
from elemental_operator.controllers import Manager, all_controllers
from elemental_operator.controllers.base import get_condition, set_condition
from elemental_operator.controllers.machineinventory import (
    STALE_AFTER_ENV,
    STALE_REASON,
    ProgressSeen,
    mark_stale_progress,
)
from elemental_operator.store.sql import SqlStore

NS = "fleet-default"


def _inventory(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"tpmHash": "t-" + name},
    }


def _progress(store: SqlStore, name: str, status: str, reason: str, message: str) -> None:
    """What the server's progress endpoint writes (server/app.py _record_progress)."""
    cur = store.get("MachineInventory", NS, name)
    set_condition(cur, "InstallProgress", status, reason, message)
    store.update_status(cur)


def _cond(store: SqlStore, name: str) -> dict[str, Any]:
    return get_condition(store.get("MachineInventory", NS, name), "InstallProgress") or {}


def test_stale_after_the_bound_only() -> None:
    inv: dict[str, Any] = {"metadata": {"name": "m", "namespace": NS}}
    seen: ProgressSeen = {}
    set_condition(inv, "InstallProgress", "Unknown", "WritingSystemSlotA", "writing system slot A: 50%")
    cond = inv["status"]["conditions"][0]
    t0 = 1_000_000.0
    assert mark_stale_progress(inv, seen, now=t0) == 601.0  # first seen: look again after the bound
    # inside the bound: not stale, and the controller is told when to look again
    delay = mark_stale_progress(inv, seen, now=t0 + 10)
    assert delay == 591.0 and cond["reason"] == "WritingSystemSlotA"
    assert mark_stale_progress(inv, seen, now=t0 + 601) is None
    assert cond["reason"] == STALE_REASON and cond["status"] == "Unknown"
    assert (
        cond["message"]
        == "writing system slot A: 50% (stale: no progress since 1970-01-12T13:46:40Z, over 600s)"
    )
    before = dict(cond)
    assert mark_stale_progress(inv, seen, now=t0 + 9999) is None and cond == before  # marked once
    # a new report starts the clock again
    set_condition(inv, "InstallProgress", "Unknown", "Partitioning", "partitioning: 40%")
    assert mark_stale_progress(inv, seen, now=t0 + 10000) == 601.0 and cond["reason"] == "Partitioning"
    # finished or failed progress is never stale
    set_condition(inv, "InstallProgress", "True", "Installed", "installed: 100%")
    assert mark_stale_progress(inv, seen, now=t0 + 99999) is None and cond["reason"] == "Installed"
    assert not seen


def test_controller_marks_stale_and_a_report_clears_it(
    store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STALE_AFTER_ENV, "1")
    ctx = OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)
    mgr = Manager(ctx, all_controllers(ctx, tmp_path / "state"))
    store.create(_inventory("m1"))
    run_until(mgr, lambda: bool(get_condition(store.get("MachineInventory", NS, "m1"), "Ready")))
    _progress(store, "m1", "Unknown", "WritingSystemSlotA", "writing system slot A and recovery: 50%")
    written = time.monotonic()
    mgr.step()
    assert _cond(store, "m1")["reason"] == "WritingSystemSlotA"  # fresh: not stale yet
    # the machine lost power: no more reports; the controller's requeue marks it on its own
    run_until(mgr, lambda: _cond(store, "m1").get("reason") == STALE_REASON, timeout=15)
    assert time.monotonic() - written >= 1.0
    cond = _cond(store, "m1")
    assert cond["status"] == "Unknown" and "50%" in cond["message"] and "stale" in cond["message"]
    # the machine is back and reports again: the marker goes at once
    _progress(store, "m1", "Unknown", "CheckingConfiguration", "checking configuration: 0%")
    mgr.step()
    cond = _cond(store, "m1")
    assert cond["reason"] == "CheckingConfiguration" and "stale" not in cond["message"]
    _progress(store, "m1", "True", "Installed", "installed: 100%")
    done = time.monotonic()
    run_until(mgr, lambda: time.monotonic() - done > 2.0, timeout=15)
    assert _cond(store, "m1")["reason"] == "Installed"  # a finished install never goes stale
