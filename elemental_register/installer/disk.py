"""Target disk: discovery, deterministic choice, partition plan and partition table."""

from __future__ import annotations

import os
import re
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elemental_common.errors import die
from elemental_common.run import run

MiB = 1024 * 1024
GiB = 1024 * MiB

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

# Partition (and file system) labels. COS_OEM / COS_PERSISTENT / COS_RECOVERY keep Elemental's
# names so scripts written for Elemental still find them.
LABEL_ESP = "COS_EFI"
LABEL_OEM = "COS_OEM"
LABEL_RECOVERY = "COS_RECOVERY"
LABEL_SLOT = {"a": "COS_SYSTEM_A", "b": "COS_SYSTEM_B"}
LABEL_PERSISTENT = "COS_PERSISTENT"

# Devices that are never install targets.
_SKIP = re.compile(r"^(loop|ram|zram|sr|fd|dm-|md|nbd|mtdblock)")


@dataclass(frozen=True)
class Disk:
    name: str  # kernel name, e.g. "sda"
    path: str  # "/dev/sda"
    size: int  # bytes
    removable: bool = False
    readonly: bool = False


def _sysfs_int(p: Path, default: int = 0) -> int:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return default


def list_disks(sys_block: Path = Path("/sys/block")) -> list[Disk]:
    disks = []
    for d in sorted(sys_block.iterdir()) if sys_block.is_dir() else []:
        if _SKIP.match(d.name):
            continue
        disks.append(
            Disk(
                name=d.name,
                path=f"/dev/{d.name}",
                size=_sysfs_int(d / "size") * 512,
                removable=_sysfs_int(d / "removable") == 1,
                readonly=_sysfs_int(d / "ro") == 1,
            )
        )
    return disks


def disk_info(path: str) -> Disk:
    """Describe the block device at `path` (any block device, loop devices included)."""
    try:
        st = os.stat(path)
    except OSError:
        die(f"install device {path} does not exist", "check install.device or the device-selector rules")
    if not stat.S_ISBLK(st.st_mode):
        die(
            f"install device {path} is not a block device",
            "point install.device at a whole disk, e.g. /dev/sda",
        )
    sys = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    if (sys / "partition").exists():
        die(f"install device {path} is a partition", "give the whole disk, not a partition")
    name = sys.resolve().name
    return Disk(name, path, _sysfs_int(sys / "size") * 512, readonly=_sysfs_int(sys / "ro") == 1)


_QUANTITY = re.compile(r"^\s*([0-9.]+)\s*([KMGTPE]i?|[kmgtpe])?\s*$")
_UNITS = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: str | int) -> int:
    """Kubernetes resource quantity ("20Gi", "500M", "1000") in bytes, as Elemental's selector uses."""
    if isinstance(value, int):
        return value
    m = _QUANTITY.match(str(value))
    if not m:
        die(f"invalid size {value!r}", 'use a Kubernetes quantity such as "20Gi" or "500M"')
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def select_device(install: dict[str, Any], disks: Sequence[Disk]) -> str:
    """install.device wins; else the first disk *by name* matching all device-selector rules."""
    device = install.get("device")
    if device:
        return str(device)
    rules = install.get("device-selector") or []
    if not rules:
        die(
            "no install device: neither install.device nor install.device-selector is set",
            "set elemental.install.device (e.g. /dev/sda) in the MachineRegistration",
        )
    matching = [d for d in disks if all(_matches(d, r) for r in rules)]
    if not matching:
        seen = ", ".join(f"{d.name} ({d.size // GiB} GiB)" for d in disks) or "none"
        die(f"no disk matches install.device-selector {rules}", f"disks seen: {seen}")
    # Elemental took the first map entry (random); sorting by name makes the choice repeatable
    return sorted(matching, key=lambda d: d.name)[0].path


def _matches(d: Disk, rule: dict[str, Any]) -> bool:
    key, op, values = rule.get("key"), rule.get("operator"), [str(v) for v in rule.get("values") or []]
    if key == "Name":
        names = {d.name, d.path}
        if op == "In":
            return any(v in names for v in values)
        if op == "NotIn":
            return not any(v in names for v in values)
    elif key == "Size" and values:
        limit = parse_quantity(values[0])
        if op == "Gt":
            return d.size > limit
        if op == "Lt":
            return d.size < limit
    die(f"unsupported device-selector rule {rule}", "keys: Name (In/NotIn), Size (Gt/Lt)")


def _round_up(n: int, unit: int = MiB) -> int:
    return (n + unit - 1) // unit * unit


@dataclass
class Part:
    role: str  # esp | oem | recovery | a | b | persistent
    label: str
    size: int  # bytes; 0 = rest of the disk
    type: str = LINUX_TYPE
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    device: str = ""  # filled in once the table exists


@dataclass
class Layout:
    parts: list[Part]

    def part(self, role: str) -> Part:
        for p in self.parts:
            if p.role == role:
                return p
        raise KeyError(role)


# Defaults in MiB; overridable through install.partitions (our extension; Elemental had fixed sizes).
DEFAULT_SIZES = {"esp": 256, "oem": 64, "persistent-min": 512, "slot-min": 2048}


def plan_layout(disk_size: int, image_size: int, sizes: dict[str, Any] | None = None) -> Layout:
    """Sizes: ESP and OEM fixed; recovery fits the image (+10%); slots get up to max(2 GiB,
    2× image) so the next upgrade fits, shrunk on small disks but never below the image;
    persistent takes the rest (at least persistent-min)."""
    s = {**DEFAULT_SIZES, **{k: v for k, v in (sizes or {}).items() if v is not None}}
    esp, oem = int(s["esp"]) * MiB, int(s["oem"]) * MiB
    image = _round_up(max(image_size, MiB))
    recovery = int(s["recovery"]) * MiB if "recovery" in s else _round_up(image + image // 10 + 16 * MiB)
    overhead = 4 * MiB  # GPT headers and alignment
    pers_min = int(s["persistent-min"]) * MiB
    if "system" in s:
        slot = int(s["system"]) * MiB
    else:
        want = max(int(s["slot-min"]) * MiB, 2 * image)
        room = (disk_size - esp - oem - recovery - pers_min - overhead) // 2 // MiB * MiB
        slot = max(min(want, room), 0)
    need = esp + oem + recovery + 2 * max(slot, image) + pers_min + overhead
    if disk_size < need or slot < image or recovery < image:
        die(
            f"disk too small: {disk_size / GiB:.1f} GiB, this image needs at least {need / GiB:.1f} GiB "
            f"(OS image {image / MiB:.0f} MiB, two slots, recovery, {pers_min // MiB} MiB persistent)",
            "choose a larger disk (install.device / device-selector) or smaller install.partitions",
        )
    return Layout(
        [
            Part("esp", LABEL_ESP, esp, ESP_TYPE),
            Part("oem", LABEL_OEM, oem),
            Part("recovery", LABEL_RECOVERY, recovery),
            Part("a", LABEL_SLOT["a"], slot),
            Part("b", LABEL_SLOT["b"], slot),
            Part("persistent", LABEL_PERSISTENT, 0),
        ]
    )


def mounted_devices() -> set[str]:
    out = set()
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            src = line.split(" - ", 1)[1].split()[1]
            if src.startswith("/dev/"):
                out.add(os.path.realpath(src))
    except (OSError, IndexError):
        pass
    try:
        for line in Path("/proc/swaps").read_text().splitlines()[1:]:
            out.add(os.path.realpath(line.split()[0]))
    except OSError:
        pass
    return out


def partitions_of(disk: Disk) -> list[str]:
    """Device paths of the existing partitions of `disk`, in partition-number order."""
    st = os.stat(disk.path)
    sys = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").resolve()
    parts = []
    for child in sys.iterdir():
        if (child / "partition").exists():
            parts.append((_sysfs_int(child / "partition"), f"/dev/{child.name}"))
    return [p for _, p in sorted(parts)]


def check_not_in_use(disk: Disk) -> None:
    busy = mounted_devices()
    used = [p for p in [disk.path, *partitions_of(disk)] if os.path.realpath(p) in busy]
    if used:
        die(
            f"install device {disk.path} is in use ({', '.join(used)} mounted)",
            "the target must not be the disk the installer runs from; unmount it or pick another disk",
        )


def write_table(disk: Disk, layout: Layout) -> None:
    # Old file system signatures first: a half-written disk must not look bootable (the old ESP
    # would otherwise boot entries whose root partition no longer exists).
    for old in partitions_of(disk):
        run(["wipefs", "--all", "--quiet", old], check=False)
    run(["wipefs", "--all", "--quiet", disk.path], check=False)
    lines = ["label: gpt"]
    for p in layout.parts:
        size = f"size={p.size // MiB}MiB, " if p.size else ""
        lines.append(f'{size}type={p.type}, uuid={p.uuid}, name="{p.label}"')
    run(
        ["sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always", disk.path],
        input="\n".join(lines) + "\n",
        hint="the disk may be in use or too small",
    )
    settle()
    devices = partitions_of(disk)
    if len(devices) != len(layout.parts):
        # sfdisk's re-read can lose a race (seen with loop devices); tell the kernel explicitly
        run(["partx", "--update", disk.path], check=False)
        run(["partx", "--add", disk.path], check=False)
        settle()
        devices = partitions_of(disk)
    deadline = time.monotonic() + 10
    while len(devices) < len(layout.parts) and time.monotonic() < deadline:
        time.sleep(0.1)
        devices = partitions_of(disk)
    if len(devices) < len(layout.parts):
        die(
            f"{disk.path}: the kernel shows {len(devices)} partitions after partitioning, expected "
            f"{len(layout.parts)}",
            "re-read the partition table (partprobe) or reboot the seed",
        )
    for p, dev in zip(layout.parts, devices, strict=False):
        p.device = dev
        wait_for(dev)


def settle() -> None:
    if Path("/run/udev/control").exists():
        run(["udevadm", "settle", "--timeout=30"], check=False)


def wait_for(path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            die(f"{path} did not appear", "udev may not be running")
        time.sleep(0.05)


def read_table(disk_path: str) -> list[dict[str, Any]]:
    """The partition table as sfdisk reports it (name, uuid, type, node, start, size in sectors)."""
    import json

    data = json.loads(run(["sfdisk", "--json", disk_path]).stdout)
    return list(data["partitiontable"].get("partitions", []))


def partition_device(partuuid: str) -> str:
    """The device node of the partition with `partuuid` (udev's link, else blkid)."""
    p = Path(f"/dev/disk/by-partuuid/{partuuid}")
    if p.exists():
        return str(p.resolve())
    out = run(["blkid", "-l", "-o", "device", "-t", f"PARTUUID={partuuid}"], check=False).stdout.strip()
    if not out:
        die(f"no partition with PARTUUID {partuuid}", "is the system disk attached?")
    return str(out)


def device_size(dev: str) -> int:
    with open(dev, "rb") as f:
        return f.seek(0, os.SEEK_END)
