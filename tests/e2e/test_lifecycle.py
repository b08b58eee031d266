"""End-to-end lifecycle in QEMU (OVMF + swtpm) against a real operator process on the host.

One operator, one MachineRegistration and one machine for the whole module; the tests run in
order and each starts from the state the previous one left (an install under TCG costs minutes):

1. ``test_register_install_ready`` (marked ``e2e``: part of ``make test``): seed ISO → TPM
   registration → inventory named and labelled from SMBIOS → install, **power cut mid slot-A
   write** (the inventory's progress turns Stale) → the seed boots again, registers as the same
   inventory, installs (progress visible on the inventory) → power off → boot the installed OS
   with a fresh swtpm on the same TPM state → system agent → inventory Ready, plan Applied → the
   re-registration timer sends Update.
2. ``test_reset`` (``e2e``): delete the inventory → reset plan → recovery → re-registration
   with the same TPM hash → reinstall → Ready.
3. ``test_upgrade`` (``e2e``): a second OS version (out/os plus a layer with another
   IMAGE_VERSION, served by a plain-HTTP registry on the host) published through a
   ManagedOSVersionChannel of type json (a file); a ManagedOSImage targets the machine; the agent
   upgrades the inactive slot and reboots into it; the inventory's plan secret reports the version.
   **Power cuts** mid slot-B write (slot A boots, the plan runs again), right after the reboot
   instruction (slot B boots and does not upgrade again) and right after ``elemental bless`` (slot
   B still boots). While the power is off after the first and the last cut the disk is read on
   the host (each slot's erofs through fsck.erofs, the ESP's entries): A always holds the old OS,
   no entry points at a half-written slot or is empty, and at the end B holds the new OS.
4. ``test_rollback`` (``e2e``): a version whose system agent cannot start: the new slot fails
   boot assessment three times, systemd-boot falls back to the previous slot, the agent reports
   the upgrade plan failed (inventory plan Failed, ManagedOSImage UpgradeFailed).

Logs: ``results/e2e/lifecycle/`` (operator.log, m1/serial.log, m1/swtpm.log, m1/qemu.stderr,
timings-<test>.json); their tails are printed when a test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    OUT,
    RESULTS,
    InventoryRecorder,
    Operator,
    Registry,
    Timings,
    condition,
    diagnostics,
    fresh_dir,
    os_tags,
)
from installer_fixtures import derive_os_version
from lifecycle import (
    BROKEN_AGENT,
    REREGISTERED,
    Fleet,
    boot_installed,
    expected_name,
    plan_secret,
    publish_versions,
    register_install_cut,
    reset_machine,
    rollback_machine,
    upgrade_with_cuts,
    wait_console,
)
from vm import Machine

pytestmark = pytest.mark.vm

MANUFACTURER, SERIAL = "E2ECorp", "E2E-0001"
INVENTORY = expected_name(MANUFACTURER, SERIAL)
UPGRADE_VERSION, BROKEN_VERSION = "0.2.0", "0.3.0"
# A short staleness bound for InstallProgress, so the install cut shows Stale within seconds.
STALE_AFTER = 30


@pytest.fixture(scope="module")
def op(results: Path) -> Iterator[Operator]:
    """The suite's operator (conftest), with InstallProgress marked stale after STALE_AFTER s."""
    from elemental_operator.controllers.machineinventory import STALE_AFTER_ENV

    o = Operator(results)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(STALE_AFTER_ENV, str(STALE_AFTER))
        o.start()
    try:
        yield o
    finally:
        o.stop()


@pytest.fixture(scope="module")
def results() -> Path:
    return fresh_dir(RESULTS / "e2e" / "lifecycle")


@pytest.fixture(scope="module")
def fleet(op: Operator, results: Path) -> Fleet:
    return Fleet(op, results)


@pytest.fixture(scope="module")
def registry(op: Operator, results: Path) -> Iterator[Registry]:
    """OS versions for upgrades: 0.2.0 (good) and 0.3.0 (its agent cannot start), derived from out/os."""
    base = OUT / "os"
    if not os_tags(base):
        pytest.skip("out/os has no tagged image (make iso)")
    layouts = results / "os-versions"
    derive_os_version(base, layouts / "good", UPGRADE_VERSION)
    derive_os_version(base, layouts / "broken", BROKEN_VERSION, {BROKEN_AGENT[0]: (BROKEN_AGENT[1], 0o644)})
    with Registry(
        {"elemental-os": layouts / "good", "elemental-os-broken": layouts / "broken"},
        results / "registry.log",
    ) as reg:
        op.registry_host = reg.host
        publish_versions(
            op,
            reg.host,
            results,
            {
                "v" + UPGRADE_VERSION: f"elemental-os:{UPGRADE_VERSION}",
                "v" + BROKEN_VERSION: f"elemental-os-broken:{BROKEN_VERSION}",
            },
        )
        yield reg


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What the previous tests achieved (a later test skips when its starting point is missing)."""
    return {}


@pytest.fixture(scope="module")
def m1(fleet: Fleet) -> Iterator[Machine]:
    m = fleet.machine("m1", manufacturer=MANUFACTURER, serial=SERIAL)
    try:
        yield m
    finally:
        m.close()


def need(state: dict[str, Any], key: str) -> None:
    if not state.get(key):
        pytest.skip(f"needs a machine in state {key!r} (an earlier test failed or was deselected)")


@pytest.mark.e2e
def test_register_install_ready(op: Operator, m1: Machine, results: Path, state: dict[str, Any]) -> None:
    t = Timings(results / "timings-register-install-ready.json")
    with diagnostics(results), InventoryRecorder(op) as rec:
        first, inv = register_install_cut(op, m1, INVENTORY, t, rec, stale_after=STALE_AFTER)
        # the seed after the cut registered as the same inventory (same TPM, same object)
        assert inv["metadata"]["uid"] == first["metadata"]["uid"], (first["metadata"], inv["metadata"])
        assert any("(stale: no progress since" in p for p in rec.progress), rec.progress
        labels = inv["metadata"].get("labels") or {}
        assert labels.get("manufacturer") == MANUFACTURER, labels
        assert labels.get("serial") == SERIAL, labels
        assert labels.get("product") == "E2E-Box", labels
        assert inv["spec"].get("tpmHash"), inv["spec"]
        # progress moved while the install ran, and ended at 100 %
        print("install progress seen on the inventory:", rec.progress)
        assert len(rec.progress) >= 3, rec.progress
        assert rec.progress[-1].startswith("installed: 100"), rec.progress
        inv = boot_installed(op, m1, INVENTORY, t)
        assert inv["status"]["plan"]["state"] == "Applied"
        assert condition(inv, "Ready") == "True"
        assert plan_secret(op, INVENTORY).get("os-version")
        assert plan_secret(op, INVENTORY).get("os-slot") == "a"  # the agent reports the booted slot
        # the installed OS re-registers by itself (timer), as the same inventory
        wait_console(m1, REREGISTERED, timeout=600)
        again = op.get("machineinventories", INVENTORY)
        assert again["metadata"]["uid"] == inv["metadata"]["uid"]
    state["ready"] = True
    state["tpm_hash"] = inv["spec"]["tpmHash"]


@pytest.mark.e2e
def test_reset(op: Operator, m1: Machine, results: Path, state: dict[str, Any]) -> None:
    need(state, "ready")
    state["ready"] = False
    t = Timings(results / "timings-reset.json")
    with diagnostics(results):
        inv = reset_machine(op, m1, INVENTORY, t)
        assert inv["spec"]["tpmHash"] == state["tpm_hash"]
        assert inv["status"]["plan"]["state"] == "Applied"
    state["ready"] = True


@pytest.mark.e2e
def test_upgrade(op: Operator, m1: Machine, registry: Registry, results: Path, state: dict[str, Any]) -> None:
    need(state, "ready")
    state["ready"] = False
    t = Timings(results / "timings-upgrade.json")
    with diagnostics(results):
        old = plan_secret(op, INVENTORY)["os-version"]  # what slot A runs
        inv, truth = upgrade_with_cuts(
            op,
            m1,
            INVENTORY,
            t,
            mos="e2e-upgrade",
            version="v" + UPGRADE_VERSION,
            image_version=UPGRADE_VERSION,
        )
        assert condition(inv, "Ready") == "True"
        print("disk after the upgrade's power cuts:", truth)
        # cut mid slot-B write: A untouched, no entry points at the half-written B (its entry
        # was removed before the write), so the machine could only boot A. (B itself is half
        # written; fsck.erofs may or may not notice, so it is printed, not asserted.)
        mid = truth["mid-slot-b"]
        assert mid["a"] == old, mid
        assert "elemental-b" not in mid["entries"] and "elemental-a" in mid["entries"], mid
        # cut right after bless: B holds the new OS, A still the old one (the fallback was never
        # overwritten), B's entry is the blessed one and no entry is empty
        after = truth["after-bless"]
        assert after["a"] == old and after["b"] == UPGRADE_VERSION, after
        assert "elemental-b.conf:" in after["entries"], after
        assert not [e for e in after["entries"].split() if e.endswith(":0")], after
    state["ready"] = True
    state["upgraded"] = True


@pytest.mark.e2e
def test_rollback(
    op: Operator, m1: Machine, registry: Registry, results: Path, state: dict[str, Any]
) -> None:
    need(state, "upgraded")
    t = Timings(results / "timings-rollback.json")
    with diagnostics(results):
        inv, tries = rollback_machine(
            op, m1, INVENTORY, t, mos="e2e-broken", version="v" + BROKEN_VERSION, good_slot="b", bad_slot="a"
        )
        assert tries >= 3, tries
        assert condition(inv, "Ready", "reason") == "PlanFailure", inv["status"]
        assert plan_secret(op, INVENTORY).get("os-version") == UPGRADE_VERSION
        assert plan_secret(op, INVENTORY).get("os-slot") == "b"
        reason = lambda: condition(op.get("managedosimages", "e2e-broken"), "Ready", "reason")  # noqa: E731
        op.wait("ManagedOSImage e2e-broken UpgradeFailed", lambda: reason() == "UpgradeFailed", 120, 2)
