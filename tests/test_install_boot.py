"""VM: the real OS image installed onto a virtual disk boots slot A; a broken upgrade in slot B falls
back to A by itself; a good upgrade boots from slot B and is blessed.

Slow (TCG): several boots. The OS OCI image comes from `make os` (out/os).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from elemental_register.installer.disk import GiB
from elemental_register.installer.testing import Vm, disk_partitions, esp_entries, offline_upgrade

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("OUT", REPO / "out"))


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
    from elemental_register.installer.build_disk import build_disk

    system = os_image()
    d = tmp_path_factory.mktemp("vm")
    raw = d / "disk.raw"
    build_disk(system, raw, 6 * GiB)
    return raw


# systemd-boot prints nothing; the kernel's "Command line:" shows which entry it chose
# its console status line only shows while boot is still in progress; the audit record always
BOOT_CHECKED = r"Finished[^\n]*elemental-boot-check|type=1130[^\n]*unit=elemental-boot-check"


def boot(disk: Path, work: Path, expect_slot: str, timeout: float = 1200) -> str:
    work.mkdir(exist_ok=True)
    vm = Vm(disk, work)
    try:
        vm.wait_for(f"elemental.slot={expect_slot}", timeout=timeout)
        vm.wait_for("login:", timeout=timeout)
        # the boot-assessment unit finishes once the agent is up; blessing happens there/after
        vm.wait_for_re(BOOT_CHECKED, timeout=timeout)
        import time

        time.sleep(5)
        return vm.text()
    finally:
        vm.stop()


def test_boot_slot_a_then_fallback_then_upgrade(disk: Path, tmp_path: Path) -> None:
    system = os_image()
    # 1. fresh install boots slot A and is blessed
    log = boot(disk, tmp_path / "boot1", "a")
    assert "elemental.slot=a" in log
    entries = esp_entries(disk, tmp_path)
    assert "elemental-recovery.conf" in entries
    assert "elemental-a.conf" in entries, f"slot A not blessed: {entries}"

    # 2. an upgrade into slot B whose root file system is broken: three tries, then slot A again
    assert offline_upgrade(disk, system, "a", tmp_path) == "b"
    with disk_partitions(disk) as parts, open(parts["COS_SYSTEM_B"], "r+b") as f:
        f.write(b"\0" * (4 << 20))
    vm = Vm(disk, tmp_path / "boot2")
    try:
        vm.wait_for("elemental.slot=a", timeout=3600)
        vm.wait_for("login:", timeout=900)
        tries = vm.text().count("Command line: initrd=\\EFI\\elemental\\b\\initrd")
    finally:
        vm.stop()
    assert tries == 3, f"slot B was tried {tries} times"
    entries = esp_entries(disk, tmp_path)
    assert "elemental-b+0-3.conf" in entries and "elemental-a.conf" in entries, entries

    # 3. a good upgrade into slot B boots B and is blessed
    assert offline_upgrade(disk, system, "a", tmp_path) == "b"
    boot(disk, tmp_path / "boot3", "b")
    entries = esp_entries(disk, tmp_path)
    assert "elemental-b.conf" in entries and "elemental-a.conf" in entries, entries
