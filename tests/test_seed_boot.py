"""The seed ISO boots under QEMU (OVMF + swtpm), mounts its medium and starts the register service.

Needs ``out/seed.iso`` (``make iso`` or ``make seed repack``); skipped otherwise. Under TCG the whole
test takes 3-6 minutes. Logs: ``results/test_seed_boot/seed/`` (serial.log, qemu.stderr, swtpm.log).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vm import Machine, VMError

pytestmark = pytest.mark.vm

OUT = Path(os.environ.get("OUT") or "out")
ISO = OUT / "seed.iso"
RESULTS = Path(os.environ.get("RESULTS") or "results") / "test_seed_boot"
LIVE_REGISTRATION = "/run/initramfs/live/registration.yaml"
CLIENT_LINE = f"using registration file {LIVE_REGISTRATION}"
UNIT = "elemental-register-install.service"


@pytest.fixture
def seed() -> Iterator[Machine]:
    if not ISO.is_file():
        pytest.skip(f"{ISO} has not been built (make iso, or make seed repack)")
    m = Machine("seed", results_dir=RESULTS, memory_mb=2048)
    try:
        m.add_disk(size="8G")  # a target disk, as on a real machine (empty: the firmware skips it)
        m.add_cdrom(ISO)
        yield m
    finally:
        m.close()


def journal(m: Machine) -> str:
    return m.run(f"journalctl -b --no-pager -o cat -u {UNIT}", check=False)


def test_seed_iso_boots_and_starts_register(seed: Machine) -> None:
    m = seed
    m.boot()
    m.wait_for_shell(timeout=900)

    # The TPM (swtpm behind tpm-tis) is usable through the kernel's resource manager.
    assert "TPMRM-OK" in m.run("test -c /dev/tpmrm0 && echo TPMRM''-OK")

    # The medium (ISO9660 volume COS_LIVE) is mounted read-only at /run/initramfs/live.
    deadline = time.monotonic() + 120
    while "iso9660" not in (mnt := m.run("findmnt -n -o FSTYPE,OPTIONS /run/initramfs/live", check=False)):
        if time.monotonic() > deadline:
            raise VMError(f"medium not mounted at /run/initramfs/live: {mnt!r}")
        time.sleep(5)
    fstype_options = next(line for line in mnt.splitlines() if line.startswith("iso9660"))
    assert "ro" in fstype_options.split()[1].split(","), mnt
    registration = m.run(f"cat {LIVE_REGISTRATION}")
    assert "registration" in registration and "url" in registration, registration

    # The register service starts and reads the embedded registration file. While the client
    # is not in the image yet, the unit having started at least once is what we can check.
    deadline = time.monotonic() + 420
    while True:
        log = journal(m)
        if CLIENT_LINE in log:
            break
        started = m.run(f"systemctl show -P ExecMainStartTimestampMonotonic {UNIT}", check=False).strip()
        client_missing = "No module named 'elemental_register.cli'" in log
        if client_missing and started not in ("", "0"):
            # Register client not written yet: the unit ran `elemental-register --install` and
            # the registration file is readable by it (root) in the guest.
            m.run(f"test -r {LIVE_REGISTRATION}")
            break
        if time.monotonic() > deadline:
            raise VMError(f"{UNIT} did not read {LIVE_REGISTRATION}; its journal:\n{log}")
        time.sleep(10)
    status = m.run(f"systemctl show -P NRestarts -P ActiveState {UNIT}", check=False)
    print(f"{UNIT}: {status.split()}")
    m.poweroff(timeout=180)
