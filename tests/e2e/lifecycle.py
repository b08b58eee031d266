"""Steps of the machine lifecycle shared by the scenarios (and bench/e2e.py): one operator, one
registration, one seed ISO, machines booted from it under QEMU + OVMF + swtpm."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import InventoryRecorder, Operator, Timings, condition, pack_seed
from vm import Machine, VMError

# The installed OS's initrd has no virtio_blk (docs/installer.md): the target disk is NVMe.
INSTALL_DEVICE = "/dev/nvme0n1"
ROOT_PASSWORD = "elemental-e2e"
SEED_MEMORY_MB = 3072  # the seed unpacks the OS image and builds its erofs in RAM (tmpfs)
OS_MEMORY_MB = 2048

# Console markers (services log to journal+console).
REGISTERED = "registration successful"
INSTALLED = r"install progress: installed 100%"


def smbios(manufacturer: str, product: str, serial: str) -> list[str]:
    return ["-smbios", f"type=1,manufacturer={manufacturer},product={product},serial={serial}"]


def registration_spec(*, emulated_seed: int | None = None, poweroff: bool = True) -> dict[str, Any]:
    """TPM auth (or an emulated TPM), install to the NVMe disk, names and labels from SMBIOS."""
    reg: dict[str, Any] = {"auth": "tpm"}
    if emulated_seed is not None:
        reg.update({"emulate-tpm": True, "emulated-tpm-seed": emulated_seed})
    return {
        "machineName": "${System Information/Manufacturer}-${System Information/Serial Number}",
        "machineInventoryLabels": {
            "manufacturer": "${System Information/Manufacturer}",
            "product": "${System Information/Product Name}",
            "serial": "${System Information/Serial Number}",
            "e2e": "true",
        },
        "config": {
            "elemental": {
                "install": {"device": INSTALL_DEVICE, "poweroff": poweroff, "reboot": not poweroff},
                "reset": {"enabled": True, "reset-persistent": True, "reset-oem": True, "reboot": True},
                "registration": reg,
            },
            # a console login for debugging a failed run (root / ROOT_PASSWORD)
            "cloud-config": {"users": [{"name": "root", "plain_text_passwd": ROOT_PASSWORD}]},
        },
    }


@dataclass
class Fleet:
    """An operator with one registration and a seed ISO that embeds its registration file."""

    op: Operator
    results: Path
    name: str = "e2e"
    spec: dict[str, Any] = field(default_factory=registration_spec)
    iso: Path = field(init=False)

    def __post_init__(self) -> None:
        reg = self.op.registration(self.name, self.spec)
        self.registration_file = self.op.registration_file(reg)
        (self.results / f"registration-{self.name}.yaml").write_bytes(self.registration_file)
        self.iso = pack_seed(self.registration_file, self.results / f"seed-{self.name}.iso")

    def machine(
        self, name: str, *, manufacturer: str = "E2ECorp", serial: str = "E2E-0001", **kw: Any
    ) -> Machine:
        m = Machine(
            name,
            results_dir=self.results,
            memory_mb=SEED_MEMORY_MB,
            extra_args=smbios(manufacturer, "E2E Box", serial),
            **kw,
        )
        m.add_disk(size="8G", interface="nvme")
        m.add_cdrom(self.iso)
        return m


def expected_name(manufacturer: str, serial: str) -> str:
    from elemental_operator.registration.templater import sanitize_machine_name

    return sanitize_machine_name(f"{manufacturer}-{serial}")


def _alive(m: Machine) -> None:
    if m.qemu is not None and m.qemu.poll() is not None:
        raise VMError(f"{m.name}: QEMU exited (rc {m.qemu.returncode}); see {m.serial_log}")
    m.poll_stall()


def register_and_install(
    op: Operator, m: Machine, inv_name: str, t: Timings, rec: InventoryRecorder, *, timeout: float = 1800
) -> dict[str, Any]:
    """Boot the seed (empty disk first in boot order, so the firmware falls through to the ISO),
    wait for registration and the install, which powers the machine off."""
    m.boot()
    m.expect(REGISTERED, timeout=timeout)
    inv = op.wait(f"MachineInventory {inv_name}", lambda: op.try_get("machineinventories", inv_name), 60, 1)
    t.mark("boot-to-registered")
    m.expect(INSTALLED, timeout=timeout)
    m.wait_exit(timeout=300)  # install.poweroff
    t.mark("install")
    result: dict[str, Any] = inv
    return result


def wait_ready(
    op: Operator, m: Machine, inv_name: str, *, timeout: float = 1200, after: float = 0.0
) -> dict[str, Any]:
    """The agent applied the inventory's plan: Ready=True and status.plan.state=Applied."""

    def ready() -> dict[str, Any] | None:
        inv = op.try_get("machineinventories", inv_name)
        plan = ((inv or {}).get("status") or {}).get("plan") or {}
        if inv and condition(inv, "Ready") == "True" and plan.get("state") == "Applied":
            return inv
        return None

    result: dict[str, Any] = op.wait(
        f"{inv_name} Ready with its plan applied", ready, timeout, 3, lambda: _alive(m)
    )
    return result


def boot_installed(
    op: Operator, m: Machine, inv_name: str, t: Timings, *, timeout: float = 1500
) -> dict[str, Any]:
    """Power on again from the installed disk (fresh swtpm on the same state) until Ready."""
    m.memory_mb = OS_MEMORY_MB
    m.boot()
    m.expect(r"elemental\.slot=a", timeout=600)
    inv = wait_ready(op, m, inv_name, timeout=timeout)
    t.mark("reboot-to-ready")
    return inv


def wait_console(m: Machine, text: str, timeout: float) -> None:
    """`text` appears in the machine's serial log (any boot; it may have scrolled past already)."""
    deadline = time.monotonic() + timeout
    while text not in m.serial_log.read_text(errors="replace"):
        _alive(m)
        if time.monotonic() > deadline:
            raise VMError(f"{m.name}: no {text!r} on the console within {timeout:.0f}s; see {m.serial_log}")
        time.sleep(3)


# elemental-register.timer on the installed OS (5 s after boot, then every 30 min): the plain run
# authenticates again and sends Update.
REREGISTERED = "re-registration: updating the existing inventory"


def plan_secret(op: Operator, inv_name: str) -> dict[str, str]:
    import base64

    secret = op.get("secrets", inv_name)
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.get("data") or {}).items()}


def reset_machine(
    op: Operator, m: Machine, inv_name: str, t: Timings, *, timeout: float = 2400
) -> dict[str, Any]:
    """Delete the inventory: reset plan → recovery → re-registration (same TPM hash, new inventory)
    → reinstall from recovery → reboot into slot A → the new inventory is Ready."""
    old = op.get("machineinventories", inv_name)
    old_uid, tpm_hash = old["metadata"]["uid"], old["spec"].get("tpmHash")
    t.mark("before-reset")
    op.delete("machineinventories", inv_name)
    m.expect(r"elemental\.mode=recovery", timeout=900)
    t.mark("reset-plan-to-recovery")

    def reregistered() -> dict[str, Any] | None:
        for inv in op.inventories():
            meta = inv["metadata"]
            same_machine = (inv.get("spec") or {}).get("tpmHash") == tpm_hash
            if same_machine and meta["uid"] != old_uid and not meta.get("deletionTimestamp"):
                return inv
        return None

    new = op.wait("a new inventory with the same TPM hash", reregistered, timeout, 3, lambda: _alive(m))
    # the recovery system sends SMBIOS data too: same templated name and labels as before
    assert new["metadata"]["name"] == inv_name, new["metadata"]
    assert new["metadata"].get("labels") == old["metadata"].get("labels"), new["metadata"]
    t.mark("recovery-to-reregistered")
    m.expect(r"elemental\.slot=a", timeout=900)
    inv = wait_ready(op, m, inv_name, timeout=timeout)
    t.mark("reset-reboot-to-ready")
    t.marks["reset-to-ready"] = round(
        sum(
            t.marks[k]
            for k in ("reset-plan-to-recovery", "recovery-to-reregistered", "reset-reboot-to-ready")
        ),
        1,
    )
    return inv


# A drop-in that makes the system agent fail: the boot check fails, the counted boot reboots,
# and after three tries systemd-boot falls back to the other slot.
BROKEN_AGENT = (
    "/usr/lib/systemd/system/elemental-system-agent.service.d/99-e2e-broken.conf",
    b"[Service]\nExecStart=\nExecStart=/bin/false\n",
)


def publish_versions(op: Operator, registry_host: str, workdir: Path, versions: dict[str, str]) -> None:
    """A ManagedOSVersionChannel of type json reading a file on the operator's host; `versions`
    maps version name → image repository:tag in `registry_host`."""
    import json

    entries = [
        {
            "metadata": {"name": name},
            "spec": {"version": name, "type": "container", "metadata": {"upgradeImage": image}},
        }
        for name, image in versions.items()
    ]
    channel_file = workdir / "channel.json"
    channel_file.write_text(json.dumps(entries, indent=1))
    op.create(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "ManagedOSVersionChannel",
            "metadata": {"name": "e2e-channel"},
            "spec": {
                "type": "json",
                "registry": registry_host,
                "options": {"uri": str(channel_file)},
                "syncInterval": "1m",
            },
        }
    )
    for name in versions:
        op.wait(f"ManagedOSVersion {name}", functools.partial(op.try_get, "managedosversions", name), 60, 1)


def start_upgrade(op: Operator, name: str, version: str, registry_host: str) -> None:
    op.create(
        {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "ManagedOSImage",
            "metadata": {"name": name},
            "spec": {
                "managedOSVersionName": version,
                "nodeSelector": {"matchLabels": {"e2e": "true"}},
                # the test registry is plain HTTP
                "upgradeContainer": {
                    "envs": [{"name": "ELEMENTAL_INSECURE_REGISTRIES", "value": registry_host}]
                },
            },
        }
    )


def upgrade_machine(
    op: Operator,
    m: Machine,
    inv_name: str,
    t: Timings,
    *,
    mos: str,
    version: str,
    image_version: str,
    slot: str,
) -> dict[str, Any]:
    """ManagedOSImage → upgrade plan applied → reboot into `slot` → Ready, reporting the new version."""
    before = (op.get("machineinventories", inv_name).get("status") or {}).get("plan", {}).get("checksum")
    t.mark("before-upgrade")
    start_upgrade(op, mos, version, op.registry_host)
    m.expect(rf"elemental\.slot={slot}", timeout=1800)
    t.mark("upgrade-applied-to-reboot")

    def upgraded() -> dict[str, Any] | None:
        inv = op.try_get("machineinventories", inv_name)
        plan = ((inv or {}).get("status") or {}).get("plan") or {}
        secret = plan_secret(op, inv_name)
        if (
            inv
            and plan.get("state") == "Applied"
            and plan.get("checksum") != before
            and condition(inv, "Ready") == "True"
            and secret.get("os-version") == image_version
        ):
            return inv
        return None

    inv: dict[str, Any] = op.wait(f"{inv_name} on {image_version}", upgraded, 1500, 3, lambda: _alive(m))
    t.mark("upgrade-reboot-to-ready")
    t.marks["upgrade-to-ready"] = round(
        t.marks["upgrade-applied-to-reboot"] + t.marks["upgrade-reboot-to-ready"], 1
    )
    op.wait(
        f"ManagedOSImage {mos} UpgradeComplete",
        lambda: condition(op.get("managedosimages", mos), "Ready", "reason") == "UpgradeComplete",
        120,
        2,
    )
    return inv


def rollback_machine(
    op: Operator,
    m: Machine,
    inv_name: str,
    t: Timings,
    *,
    mos: str,
    version: str,
    good_slot: str,
    bad_slot: str,
) -> tuple[dict[str, Any], int]:
    """A version whose slot cannot pass boot assessment: three tries, then the machine is back on
    `good_slot` by itself and the failure shows on the inventory and the ManagedOSImage."""
    t.mark("before-rollback")
    # The previous upgrade's ManagedOSImage stays: the newer image owns the machine (the operator
    # must not let the older one re-assert its plan over the broken slot).
    start_upgrade(op, mos, version, op.registry_host)
    m.expect(rf"elemental\.slot={bad_slot}", timeout=1800)
    t.mark("broken-upgrade-to-first-try")
    for _ in range(2):
        m.expect(rf"elemental\.slot={bad_slot}", timeout=900)
    m.expect(rf"elemental\.slot={good_slot}", timeout=900)
    t.mark("three-tries-then-fallback")

    def failed() -> dict[str, Any] | None:
        inv = op.try_get("machineinventories", inv_name)
        plan = ((inv or {}).get("status") or {}).get("plan") or {}
        return inv if inv and plan.get("state") == "Failed" else None

    inv: dict[str, Any] = op.wait(f"{inv_name} plan Failed (rolled back)", failed, 900, 3, lambda: _alive(m))
    t.mark("fallback-to-failure-reported")
    tries = m.serial_log.read_text(errors="replace").count(f"initrd=\\EFI\\elemental\\{bad_slot}\\initrd")
    return inv, tries


# ---- power cuts (issue 11 item 8) ------------------------------------------------------------
# A cut is SIGKILL of QEMU and swtpm together: no ACPI, no flush of anything the guest did not
# flush itself. The disks use cache=unsafe, so what QEMU wrote is in the host file (only the
# guest's own write ordering and fsyncs decide what a real disk would hold). Cut points are found
# from console markers, and "mid write" from the target disk growing on the host, never by time.

INSTALL_SLOT_A = "install progress: writing system slot A and recovery 50%"
UPGRADE_SLOT_B = r"instruction os upgrade: \[ *40%\] writing system slot B"
UPGRADE_STARTED = "instruction os upgrade: elemental upgrade"
REBOOT_INSTRUCTION = "instruction schedule reboot: shutdown -r"
BLESSED_B = r"blessed elemental-b\.conf"
# into the slot write by this much before the cut (a slot's erofs is a few hundred MiB)
MID_WRITE_BYTES = 48 << 20


def disk_bytes(m: Machine) -> int:
    """Bytes the machine's first disk (the install target) occupies on the host."""
    return int((m.dir / "disk0.qcow2").stat().st_blocks) * 512


def power_cut(m: Machine, t: Timings, name: str, note: str = "") -> None:
    """Pull the plug: SIGKILL QEMU and swtpm at once, then tidy the harness's side of it."""
    import os
    import signal

    for proc in (m.qemu, m.swtpm):
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    m.wait_exit(timeout=30)
    if m.serial_log.exists():
        with m.serial_log.open("a") as log:
            log.write(f"\n===== power cut: {name}{note} =====\n")
    t.mark(f"cut-{name}")


def cut_mid_write(m: Machine, t: Timings, name: str, marker: str, timeout: float) -> int:
    """At `marker` (a slot write begins) wait until the target disk grew MID_WRITE_BYTES, then cut;
    returns how far in the write it was (bytes grown on the host disk)."""
    from waiting import wait_until

    m.expect(marker, timeout=timeout)
    start = disk_bytes(m)
    try:
        wait_until(lambda: disk_bytes(m) - start >= MID_WRITE_BYTES, 300, interval=0.02, what=f"{name} write")
    finally:
        grown = disk_bytes(m) - start
        power_cut(m, t, name, f" ({grown >> 20} MiB into the write)")
    return grown


def register_install_cut(
    op: Operator,
    m: Machine,
    inv_name: str,
    t: Timings,
    rec: InventoryRecorder,
    *,
    stale_after: float,
    timeout: float = 1800,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first install is cut mid slot-A write: the disk has a partition table and part of slot A
    but no boot loader (the ESP is written last), so the firmware falls through to the seed again,
    which registers as the same inventory and installs from the start. Returns (the inventory
    before the cut, the one after the second registration)."""
    m.boot()
    m.expect(REGISTERED, timeout=timeout)
    first = op.wait(f"MachineInventory {inv_name}", lambda: op.try_get("machineinventories", inv_name), 60, 1)
    t.mark("boot-to-registered")
    cut_mid_write(m, t, "install-slot-a", INSTALL_SLOT_A, timeout)
    # nothing reports any more: the operator marks the last progress (50 %) Stale
    op.wait(
        f"{inv_name} InstallProgress Stale",
        lambda: condition(op.get("machineinventories", inv_name), "InstallProgress", "reason") == "Stale",
        stale_after + 60,
        1,
    )
    t.mark("cut-to-stale")
    m.boot()
    m.expect(REGISTERED, timeout=timeout)
    t.mark("seed-again-to-registered")
    again: dict[str, Any] = op.get("machineinventories", inv_name)
    m.expect(INSTALLED, timeout=timeout)
    m.wait_exit(timeout=300)  # install.poweroff
    t.mark("reinstall")
    return first, again


def _gpt(raw: bytes) -> dict[str, tuple[int, int]]:
    """Partition name → (first LBA, last LBA) from a disk's first 34 sectors (the primary GPT)."""
    import struct

    header = raw[512:1024]
    assert header[:8] == b"EFI PART", "no GPT on the disk"
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    parts = {}
    for i in range(count):
        entry = raw[entries_lba * 512 + i * size : entries_lba * 512 + (i + 1) * size]
        if len(entry) < 128 or entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        parts[entry[56:128].decode("utf-16le").rstrip("\0")] = (first, last)
    return parts


def _read_part(disk: Path, first_lba: int, mib: int, dest: Path) -> bytes:
    """The first `mib` MiB of the partition at `first_lba` (1 MiB aligned, as sfdisk puts them)."""
    import subprocess

    assert first_lba % 2048 == 0, first_lba
    skip = first_lba // 2048
    # qemu-img dd's count is where the input ends, counted from its start, not after skip
    subprocess.run(
        [
            "qemu-img",
            "dd",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "bs=1M",
            f"skip={skip}",
            f"count={skip + mib}",
            f"if={disk}",
            f"of={dest}",
        ],
        check=True,
    )
    return dest.read_bytes() if mib <= 1 else b""


def disk_truth(disk: Path, work: Path) -> dict[str, str]:
    """What a powered-off machine's disk really holds, read on the host: each slot's
    IMAGE_VERSION from its own erofs (checked whole by fsck.erofs while extracting) and the ESP's
    boot entries with their sizes (a 0-byte entry is what bless used to leave after a cut)."""
    import shutil
    import struct
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    raw = work / "gpt.raw"
    subprocess.run(
        ["qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=34", f"if={disk}", f"of={raw}"],
        check=True,
    )
    parts = _gpt(raw.read_bytes())
    out: dict[str, str] = {}
    for slot in ("a", "b"):
        first, last = parts[f"COS_SYSTEM_{slot.upper()}"]
        head = _read_part(disk, first, 1, work / f"{slot}-head.raw")
        (magic,) = struct.unpack_from("<I", head, 1024)
        if magic != 0xE0F5E1E2:
            out[slot] = "no erofs"
            continue
        # a half-written slot may hold any superblock: never read past the partition
        size = min(
            struct.unpack_from("<I", head, 1024 + 0x24)[0] << head[1024 + 0x0C], (last - first + 1) * 512
        )
        image, tree = work / f"{slot}.erofs", work / f"{slot}-tree"
        _read_part(disk, first, -(-size // (1 << 20)), image)
        shutil.rmtree(tree, ignore_errors=True)
        check = subprocess.run(
            ["fsck.erofs", f"--extract={tree}", "--no-preserve", str(image)], capture_output=True, text=True
        )
        if check.returncode != 0:
            out[slot] = f"fsck.erofs failed: {(check.stderr or check.stdout).strip()[-200:]}"
            continue
        release = (tree / "usr/lib/os-release").read_text()
        out[slot] = next(
            (
                line.split("=", 1)[1].strip('"')
                for line in release.splitlines()
                if line.startswith("IMAGE_VERSION=")
            ),
            "",
        )
        shutil.rmtree(tree, ignore_errors=True)
        image.unlink()
    first, last = parts["COS_EFI"]
    esp = work / "esp.raw"
    _read_part(disk, first, (last - first + 1) // 2048, esp)
    entries = work / "entries"
    shutil.rmtree(entries, ignore_errors=True)
    subprocess.run(["mcopy", "-s", "-n", "-i", str(esp), "::/loader/entries", str(entries)], check=True)
    out["entries"] = " ".join(f"{p.name}:{p.stat().st_size}" for p in sorted(entries.iterdir()))
    esp.unlink()
    return out


def upgrade_with_cuts(
    op: Operator,
    m: Machine,
    inv_name: str,
    t: Timings,
    *,
    mos: str,
    version: str,
    image_version: str,
) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The upgrade into slot B with three power cuts on the way (no extra machine):

    1. mid slot-B write → the machine boots slot A again (B's entry was removed before the write)
       and the agent applies the same upgrade plan again, from the start;
    2. right after the reboot instruction (the plan is recorded applied just before it) → the
       machine boots slot B and does not run the upgrade again, so slot A keeps the old OS;
    3. right after `elemental bless` renamed B's entry → slot B boots again (the entry survived).
    Returns the Ready inventory on the new version and what the disk held (disk_truth) while
    the power was off after cuts 1 and 3."""
    before = (op.get("machineinventories", inv_name).get("status") or {}).get("plan", {}).get("checksum")
    t.mark("before-upgrade")
    start_upgrade(op, mos, version, op.registry_host)
    cut_mid_write(m, t, "upgrade-slot-b", UPGRADE_SLOT_B, 1800)
    truth = {"mid-slot-b": disk_truth(m.dir / "disk0.qcow2", m.dir / "truth")}
    t.mark("disk-read-mid-slot-b")
    m.boot()
    m.expect(r"elemental\.slot=a", timeout=600)
    m.expect(UPGRADE_STARTED, timeout=900)  # the same plan, again
    t.mark("slot-a-again-to-upgrade")
    m.expect(REBOOT_INSTRUCTION, timeout=1800)
    power_cut(m, t, "after-reboot-instruction")
    m.boot()
    m.expect(r"elemental\.slot=b", timeout=600)
    t.mark("boot-slot-b")
    boot_b = m.boots

    def upgraded() -> dict[str, Any] | None:
        inv = op.try_get("machineinventories", inv_name)
        plan = ((inv or {}).get("status") or {}).get("plan") or {}
        if (
            inv
            and plan.get("state") == "Applied"
            and plan.get("checksum") != before
            and condition(inv, "Ready") == "True"
            and plan_secret(op, inv_name).get("os-version") == image_version
        ):
            return inv
        return None

    op.wait(f"{inv_name} on {image_version}", upgraded, 1500, 3, lambda: _alive(m))
    t.mark("slot-b-to-ready")
    m.expect(BLESSED_B, timeout=600)
    power_cut(m, t, "after-bless")
    truth["after-bless"] = disk_truth(m.dir / "disk0.qcow2", m.dir / "truth")
    t.mark("disk-read-after-bless")
    # the plan was recorded applied before the reboot instruction: slot B never ran it again
    log = m.serial_log.read_text(errors="replace")
    b_boot = log[log.index(f"===== boot {boot_b} ") :]
    assert UPGRADE_STARTED not in b_boot, "slot B ran the upgrade plan again after the cut"
    m.boot()
    m.expect(r"elemental\.slot=b", timeout=600)
    m.expect(REREGISTERED, timeout=600)  # this boot's own agent and register client are up
    inv: dict[str, Any] = op.wait(f"{inv_name} on {image_version}", upgraded, 600, 3, lambda: _alive(m))
    t.mark("after-bless-to-ready")
    op.wait(
        f"ManagedOSImage {mos} UpgradeComplete",
        lambda: condition(op.get("managedosimages", mos), "Ready", "reason") == "UpgradeComplete",
        120,
        2,
    )
    return inv, truth
