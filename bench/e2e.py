"""End-to-end lifecycle times in QEMU, each as a ratio to a plain boot on the same emulator.

`python -m bench e2e`. One run: a baseline boot, then one machine through the lifecycle against a
real operator process (tests/e2e/lifecycle.py, the same steps as the end-to-end tests):

* baseline: ``out/os.raw`` (the OS as a bootable disk, not registered: the agent waits for its
  config) from firmware to its ``login:`` prompt. We have no separately built stock Debian image;
  os.raw is Debian trixie + systemd with our units, so the baseline is slightly pessimistic;
* boot-to-registered: power on the seed ISO → the inventory exists;
* install: registered → installed and powered off;
* reboot-to-Ready: power on from the disk → inventory Ready with its plan applied;
* reset: delete the inventory → reset plan → recovery → re-registration → reinstall → Ready;
* upgrade: ManagedOSImage → upgrade plan applied → reboot into slot B → Ready with the new version
  (only when tests/e2e can build a second OS version).

Under TCG (KVM broken here) one run takes 20-40 minutes. ``BENCH_E2E_STEPS=baseline,install``
limits the steps; the results land in results/bench-e2e/.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "tests", REPO / "tests" / "e2e"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

RESULTS = Path(os.environ.get("RESULTS") or REPO / "results") / "bench-e2e"
LOGIN = r"login: "


def baseline_boot(results: Path) -> float:
    """Firmware → login prompt of out/os.raw (copy-on-write overlay), same emulator and memory."""
    from harness import OUT
    from lifecycle import OS_MEMORY_MB
    from vm import Machine

    raw = OUT / "os.raw"
    if not raw.is_file():
        raise RuntimeError(f"{raw} missing (make iso)")
    with Machine("baseline", results_dir=results, memory_mb=OS_MEMORY_MB, tpm=True) as m:
        m.add_disk(backing=raw, interface="nvme")
        t0 = time.monotonic()
        m.boot()
        m.expect(LOGIN, timeout=1200)
        return time.monotonic() - t0


def lifecycle(results: Path, steps: set[str]) -> dict[str, float]:
    from harness import InventoryRecorder, Operator, Timings
    from lifecycle import Fleet, boot_installed, expected_name, register_and_install, reset_machine

    out: dict[str, float] = {}
    op = Operator(results).start()
    try:
        t = Timings(results / "timings.json")
        fleet = Fleet(op, results)
        t.mark("setup")
        name = expected_name("E2ECorp", "E2E-0001")
        with fleet.machine("m1") as m, InventoryRecorder(op) as rec:
            register_and_install(op, m, name, t, rec)
            out["boot-to-registered"] = t.marks["boot-to-registered"]
            out["install"] = t.marks["install"]
            boot_installed(op, m, name, t)
            out["reboot-to-Ready"] = t.marks["reboot-to-ready"]
            if "reset" in steps:
                reset_machine(op, m, name, t)
                out["reset"] = t.marks["reset-to-ready"]
            if "upgrade" in steps:
                from harness import OUT, Registry
                from installer_fixtures import derive_os_version
                from lifecycle import publish_versions, upgrade_machine

                derive_os_version(OUT / "os", results / "os-0.2.0", "0.2.0")
                with Registry({"elemental-os": results / "os-0.2.0"}, results / "registry.log") as reg:
                    op.registry_host = reg.host
                    publish_versions(op, reg.host, results, {"v0.2.0": "elemental-os:0.2.0"})
                    # after a reset the machine runs slot A, so the upgrade goes to B
                    upgrade_machine(
                        op, m, name, t, mos="bench", version="v0.2.0", image_version="0.2.0", slot="b"
                    )
                out["upgrade"] = t.marks["upgrade-to-ready"]
    finally:
        op.stop()
    return out


def table(rows: list[tuple[str, float, Any]]) -> str:
    lines = ["| step | seconds | × plain boot |", "|---|---:|---:|"]
    for name, secs, ratio in rows:
        lines.append(f"| {name} | {secs:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    from harness import fresh_dir
    from vm import accel

    steps = set((os.environ.get("BENCH_E2E_STEPS") or "baseline,install,reset,upgrade").split(","))
    results = fresh_dir(RESULTS)
    kind = accel()
    base = baseline_boot(results) if "baseline" in steps else 0.0
    times = lifecycle(results, steps) if "install" in steps else {}
    rows: list[tuple[str, float, Any]] = []
    if base:
        rows.append(("plain boot (out/os.raw → login:)", base, "1.00"))
    for name, secs in times.items():
        rows.append((name, secs, f"{secs / base:.2f}" if base else "-"))
    print(f"emulator: QEMU {kind}; baseline: out/os.raw (Debian trixie OS image, unregistered)\n")
    print(table(rows))
    targets = {"boot-to-registered": 1.3, "reboot-to-Ready": 1.2}
    for name, limit in targets.items():
        if name in times and base:
            ratio = times[name] / base
            print(f"{name}: {ratio:.2f}× (target ≤ {limit}×){'' if ratio <= limit else '  ABOVE TARGET'}")


if __name__ == "__main__":
    main()
