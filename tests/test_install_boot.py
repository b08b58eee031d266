"""VM, the installer's own part of booting: a disk written by `elemental build-disk` from the real OS
image boots slot A (through dm-verity) and blesses it; an upgrade into slot B with one byte of its
file system flipped (dm-verity refuses the block: it never reaches user space) is tried three
times, then the firmware's boot loader falls back to slot A.

The rest of the lifecycle runs in tests/e2e/test_lifecycle.py (operator-driven: a good upgrade boots
slot B and is Ready, a slot that fails boot assessment falls back, reset), and blessing a slot B
entry in tests/test_installer_lifecycle.py (test_bless_renames_the_booted_entry).

Slow (TCG): five boots. The OS OCI image comes from `make os` (out/os). Logs:
``results/test_install_boot/installed/`` (serial.log, qemu.stderr).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from installer_fixtures import derive_os_version, disk_partitions, esp_entries, offline_upgrade
from vm import Machine

from elemental_register.installer.build_disk import build_disk
from elemental_register.installer.disk import GiB

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("OUT", REPO / "out"))
RESULTS = Path(os.environ.get("RESULTS") or REPO / "results") / "test_install_boot"

# systemd-boot prints nothing; the kernel's "Command line:" shows which entry it chose.
SLOT_A = r"elemental\.slot=a"
B_TRY = "Command line: initrd=\\EFI\\elemental\\b\\initrd"
# elemental-boot-check.service, on a counted boot: the system agent is up, and the unit's
# `elemental bless` has renamed the entry (the OS image has no systemd-bless-boot, so nothing
# else blesses it later). Its console status line only shows while boot is still in progress;
# the audit record (SERVICE_START: a oneshot starts once its ExecStart lines have run) always.
# the kernel's dm-verity on a block whose hash does not match (drivers/md/dm-verity-target.c)
VERITY_REFUSED = re.compile(r"device-mapper: verity: .*(data|metadata) block \d+ is corrupted")
BOOT_CHECKED = r"Finished[^\n]*elemental-boot-check|type=1130[^\n]*unit=elemental-boot-check"


def os_image() -> str:
    if os.environ.get("ELEMENTAL_TEST_OS_IMAGE"):  # e.g. a locally patched image
        return os.environ["ELEMENTAL_TEST_OS_IMAGE"]
    index = OUT / "os/index.json"
    if not index.is_file():
        pytest.skip(f"no OS image at {OUT}/os (build it with `make os`)")
    tags = [
        m.get("annotations", {}).get("org.opencontainers.image.ref.name")
        for m in json.loads(index.read_text()).get("manifests", [])
    ]
    tags = [t for t in tags if t]
    if not tags:
        pytest.skip(f"{OUT}/os has no tagged manifest")
    return f"oci:{OUT}/os:{tags[0]}"


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0 or not shutil.which("qemu-system-x86_64"):
        pytest.skip("needs root, loop devices and qemu")
    system = os_image()
    raw = tmp_path_factory.mktemp("vm") / "disk.raw"
    build_disk(system, raw, 6 * GiB)
    return raw


def test_boot_slot_a_then_broken_slot_b_falls_back(disk: Path, tmp_path: Path) -> None:
    # One machine (its firmware variables persist across its boots, and the harness keeps them in
    # its results directory: a new machine each run); the disk is changed between boots from the
    # host, through a loop device, while QEMU is not running. No TPM: the installer's boot path
    # does not use it.
    shutil.rmtree(RESULTS / "installed", ignore_errors=True)
    with Machine("installed", results_dir=RESULTS, tpm=False) as m:
        m.add_disk(disk, interface="nvme")

        # 1. the fresh disk boots slot A (a counted entry) and blesses it
        m.boot()
        m.expect(SLOT_A, timeout=1200)
        m.expect(BOOT_CHECKED, timeout=1200)
        m.poweroff()
        entries = esp_entries(disk)
        assert "elemental-recovery.conf" in entries, entries
        assert "elemental-a.conf" in entries, f"slot A not blessed: {entries}"

        # 2. an upgrade into slot B whose root file system is broken: three tries, then slot A.
        # A version other than the running one (the installer never rewrites the running version
        # into the other slot); its contents do not matter, slot B's file system is overwritten.
        layout, _, _ = os_image().removeprefix("oci:").rpartition(":")
        tag = derive_os_version(Path(layout), tmp_path / "next", "0.2.0-broken")
        assert offline_upgrade(disk, f"oci:{tmp_path / 'next'}:{tag}", "a", tmp_path) == "b"
        # one byte of the erofs superblock flipped: dm-verity refuses the block, the root cannot
        # be mounted (a tar image's slot has no verity: the same flip breaks its superblock)
        with disk_partitions(disk) as parts, open(parts["COS_SYSTEM_B"], "r+b") as f:
            f.seek(1024 + 8)
            byte = f.read(1)
            f.seek(1024 + 8)
            f.write(bytes([byte[0] ^ 0xFF]))
        start = m.serial_log.stat().st_size
        m.boot()
        m.expect(SLOT_A, timeout=3600)
        m.expect(r"login: ", timeout=900)
        m.poweroff()
        with m.serial_log.open("rb") as log:
            log.seek(start)
            tail = log.read().decode(errors="replace")
            tries = tail.count(B_TRY)
    assert tries == 3, f"slot B was tried {tries} times; see {m.serial_log}"
    assert VERITY_REFUSED.search(tail), f"no dm-verity corruption report; see {m.serial_log}"
    entries = esp_entries(disk)
    assert "elemental-b+0-3.conf" in entries and "elemental-a.conf" in entries, entries
