"""Hardware data a registering machine sends: SMBIOS (dmidecode), SystemDataV2 labels, annotations.

Every reader takes a ``root`` (default "/") so tests run on recorded trees, and the parsers
are pure functions over text.

* SMBIOS: ``dmidecode -t N`` for types 0, 1, 2, 3, 4, 11 parsed like Elemental's
  ``pkg/dmidecode`` (section title → field → value; indented sub-lines become lists; a
  field that only has sub-lines keeps its trailing ':' in the key, e.g. ``Flags:``).
* SystemDataV2: the ``hostinfo.ExtractLabels`` families (Product, BIOS, BaseBoard, Chassis,
  Memory, CPU, GPU, Network, Storage, Runtime), every leaf a string so templates can use it,
  plus the legacy ``System Data`` map.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elemental_common.run import run as _run_tool

SMBIOS_TYPES = ("0", "1", "2", "3", "4", "11")
_STOP_TITLES = {"OEM-specific Type", "End Of Table"}
_BAD_UUIDS = {"", "unspecified", "none"}

# ---------------------------------------------------------------------------------------------
# SMBIOS


def _put(root: dict[str, Any], path: list[str], value: Any) -> None:
    node = root
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _get_path(root: dict[str, Any], path: list[str]) -> Any:
    node: Any = root
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def parse_dmidecode(text: str) -> dict[str, Any]:
    """dmidecode output → nested map, matching Elemental's parser key for key."""
    result: dict[str, Any] = {}
    in_record = False
    last_key: list[str] = []
    for line in text.splitlines():
        if line.startswith("Handle "):
            in_record = True
            continue
        if not line.strip() or not in_record or line in _STOP_TITLES:
            in_record = False
            continue
        key: list[str] = []
        while line.startswith("\t"):
            line = line[1:]
            if len(last_key) > len(key):
                key.append(last_key[len(key)])
        name, sep, value = line.partition(": ")
        name, value = name.strip(), value.strip() if sep else ""
        key.append(name)
        if value or ":" in line:
            _put(result, key, value)
        elif len(key) > 1:
            parent = key[:-1]
            current = _get_path(result, parent)
            _put(result, parent, [*current, name] if isinstance(current, list) else [name])
        else:
            _put(result, key, {})
        last_key = key
    return result


def read_smbios(run: Callable[[list[str]], str] | None = None) -> dict[str, Any]:
    """Run dmidecode for the types Elemental reads; raises `Die` on failure (no dmidecode, not root)."""

    def _run(argv: list[str]) -> str:
        # bytes: firmware strings are not always UTF-8, and a bad byte must not lose the table
        out: bytes = _run_tool(argv, binary=True, hint="dmidecode reads SMBIOS as root").stdout
        return out.decode(errors="replace")

    runner = run or _run
    return parse_dmidecode("".join(runner(["dmidecode", "-t", t]) for t in SMBIOS_TYPES))


# ---------------------------------------------------------------------------------------------
# /sys and /proc readers


def _read(root: Path, rel: str) -> str:
    try:
        return (root / rel.lstrip("/")).read_text(errors="replace").strip()
    except OSError:
        return ""


def _dmi(root: Path, name: str) -> str:
    return _read(root, f"sys/class/dmi/id/{name}")


def _cpu(root: Path) -> dict[str, Any]:
    text = _read(root, "proc/cpuinfo")
    blocks = [b for b in text.split("\n\n") if b.strip()]
    procs: dict[str, dict[str, Any]] = {}
    threads = 0
    for block in blocks:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
        if "processor" not in fields:
            continue
        threads += 1
        pid = fields.get("physical id", "0")
        p = procs.setdefault(
            pid,
            {
                "ID": pid,
                "Model": fields.get("model name", fields.get("Processor", "")),
                "Vendor": fields.get("vendor_id", fields.get("CPU implementer", "")),
                "Capabilities": fields.get("flags", fields.get("Features", "")),
                "_cores": set(),
                "_threads": 0,
            },
        )
        p["_cores"].add(fields.get("core id", fields["processor"]))
        p["_threads"] += 1
    out_procs: dict[str, Any] = {}
    total_cores = 0
    for i, pid in enumerate(sorted(procs, key=lambda x: int(x) if x.isdigit() else 0)):
        p = procs[pid]
        cores = len(p.pop("_cores"))
        total_cores += cores
        p["NumCores"] = str(cores)
        p["NumThreads"] = str(p.pop("_threads"))
        out_procs[str(i)] = p
    cpu: dict[str, Any] = {
        "TotalCores": str(total_cores),
        "TotalThreads": str(threads),
        "TotalProcessors": str(len(out_procs)),
        "Processors": out_procs,
    }
    if "0" in out_procs:
        cpu["Processor"] = out_procs["0"]
    return cpu


def _memory(root: Path) -> dict[str, Any]:
    usable = 0
    for line in _read(root, "proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            usable = int(line.split()[1]) * 1024
    physical = 0
    block = _read(root, "sys/devices/system/memory/block_size_bytes")
    mem_dir = root / "sys/devices/system/memory"
    if block and mem_dir.is_dir():
        size = int(block, 16)
        online = sum(
            1 for d in mem_dir.glob("memory*") if _read(root, f"{d.relative_to(root)}/online") == "1"
        )
        physical = size * online
    physical = max(physical, usable)
    return {"TotalPhysicalBytes": str(physical), "TotalUsableBytes": str(usable)}


def _ipv4(name: str) -> str:
    # SIOCGIFADDR: the primary IPv4 address, without depending on iproute2.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            data = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return ""
    return socket.inet_ntoa(data[20:24])


def _ipv6(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in _read(root, "proc/net/if_inet6").splitlines():
        parts = line.split()
        if len(parts) == 6:
            addr = str(ipaddress.IPv6Address(bytes.fromhex(parts[0])))
            out.setdefault(parts[5], []).append(addr)
    return out


def _nics(root: Path, live: bool) -> dict[str, dict[str, str]]:
    nics: dict[str, dict[str, str]] = {}
    base = root / "sys/class/net"
    v6 = _ipv6(root)
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        name = entry.name
        if name == "lo":
            continue
        rel = f"sys/class/net/{name}"
        device = entry / "device"
        pci = ""
        if device.exists():
            target = os.path.basename(os.path.realpath(device))
            if re.match(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$", target):
                pci = target
        v4 = _ipv4(name) if live else ""
        nic = {
            "Name": name,
            "MacAddress": _read(root, f"{rel}/address"),
            "IsVirtual": str(not device.exists()).lower(),
            "Speed": _read(root, f"{rel}/speed"),
            "Duplex": _read(root, f"{rel}/duplex"),
            "PCIAddress": pci,
            "IPv4Address": v4,
            "IPv4Addresses": v4,
            "IPv6Address": (v6.get(name) or [""])[0],
            "IPv6Addresses": ",".join(v6.get(name, [])),
        }
        nics[name] = nic
    return nics


def _controller(name: str) -> str:
    for prefix, ctrl in (
        ("nvme", "NVMe"),
        ("vd", "virtio"),
        ("xvd", "virtio"),
        ("mmcblk", "MMC"),
        ("sd", "SCSI"),
        ("sr", "SCSI"),
        ("hd", "IDE"),
    ):
        if name.startswith(prefix):
            return ctrl
    return "Unknown"


def _disks(root: Path) -> list[dict[str, str]]:
    disks = []
    base = root / "sys/block"
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        name = entry.name
        if name.startswith(("loop", "ram", "zram", "dm-", "md", "nbd")):
            continue
        rel = f"sys/block/{name}"
        sectors = _read(root, f"{rel}/size") or "0"
        if name.startswith("sr"):
            drive = "ODD"
        elif name.startswith("fd"):
            drive = "FDD"
        else:
            drive = "HDD" if _read(root, f"{rel}/queue/rotational") == "1" else "SSD"
        disks.append(
            {
                "Name": name,
                "Size": str(int(sectors) * 512 if sectors.isdigit() else 0),
                "DriveType": drive,
                "StorageController": _controller(name),
                "Removable": str(_read(root, f"{rel}/removable") == "1").lower(),
                "Vendor": _read(root, f"{rel}/device/vendor"),
                "Model": _read(root, f"{rel}/device/model"),
                "SerialNumber": _read(root, f"{rel}/device/serial"),
            }
        )
    return disks


def _gpus(root: Path) -> dict[str, Any]:
    cards: dict[str, Any] = {}
    base = root / "sys/class/drm"
    for entry in sorted(base.glob("card[0-9]*")) if base.is_dir() else []:
        if "-" in entry.name or not (entry / "device").exists():
            continue
        driver = (
            os.path.basename(os.path.realpath(entry / "device/driver"))
            if (entry / "device/driver").exists()
            else ""
        )
        rel = f"sys/class/drm/{entry.name}/device"
        cards[str(len(cards))] = {
            "Driver": driver,
            "ProductName": _read(root, f"{rel}/device"),
            "VendorName": _read(root, f"{rel}/vendor"),
        }
    return {"TotalCards": str(len(cards)), "GraphicsCards": cards}


def hostname(root: str | Path = "/") -> str:
    root = Path(root)
    if root == Path("/"):
        return socket.gethostname()
    return _read(root, "proc/sys/kernel/hostname")


def system_data_v2(root: str | Path = "/") -> dict[str, Any]:
    """SystemDataV2 families (Elemental's hostinfo.ExtractLabels shape) plus legacy ``System Data``."""
    r = Path(root)
    live = r == Path("/")
    nics = _nics(r, live)
    disks = _disks(r)
    disk_map: dict[str, Any] = {}
    for i, d in enumerate(disks):
        disk_map[str(i)] = d
        disk_map[d["Name"]] = d
    cpu = _cpu(r)
    memory = _memory(r)
    host = hostname(r)
    data: dict[str, Any] = {
        "Product": {
            "Name": _dmi(r, "product_name"),
            "Vendor": _dmi(r, "sys_vendor"),
            "Family": _dmi(r, "product_family"),
            "Version": _dmi(r, "product_version"),
            "SerialNumber": _dmi(r, "product_serial"),
            "UUID": _dmi(r, "product_uuid"),
            "SKU": _dmi(r, "product_sku"),
        },
        "BIOS": {
            "Vendor": _dmi(r, "bios_vendor"),
            "Version": _dmi(r, "bios_version"),
            "Date": _dmi(r, "bios_date"),
        },
        "BaseBoard": {
            "Vendor": _dmi(r, "board_vendor"),
            "Product": _dmi(r, "board_name"),
            "Version": _dmi(r, "board_version"),
            "SerialNumber": _dmi(r, "board_serial"),
            "AssetTag": _dmi(r, "board_asset_tag"),
        },
        "Chassis": {
            "Vendor": _dmi(r, "chassis_vendor"),
            "Type": _dmi(r, "chassis_type"),
            "Version": _dmi(r, "chassis_version"),
            "SerialNumber": _dmi(r, "chassis_serial"),
            "AssetTag": _dmi(r, "chassis_asset_tag"),
        },
        "Memory": memory,
        "CPU": cpu,
        "GPU": _gpus(r),
        "Network": {"TotalNICs": str(len(nics)), "NICs": nics},
        "Storage": {"TotalDisks": str(len(disks)), "Disks": disk_map},
        "Runtime": {"Hostname": host},
    }
    first = cpu.get("Processor") or {}
    data["System Data"] = {
        "Memory": {
            "Total Physical Bytes": memory["TotalPhysicalBytes"],
            "Total Usable Bytes": memory["TotalUsableBytes"],
        },
        "CPU": {
            "Total Cores": cpu["TotalCores"],
            "Total Threads": cpu["TotalThreads"],
            "Model": first.get("Model", ""),
            "Vendor": first.get("Vendor", ""),
            "Capabilities": first.get("Capabilities", ""),
        },
        "GPU": {},
        "Network": {
            "Number Interfaces": str(len(nics)),
            **{
                n: {"Name": n, "MacAddress": v["MacAddress"], "IsVirtual": v["IsVirtual"]}
                for n, v in nics.items()
            },
        },
        "Block Devices": {
            "Number Devices": str(len(disks)),
            **{
                d["Name"]: {
                    "Size": d["Size"],
                    "Name": d["Name"],
                    "Drive Type": d["DriveType"],
                    "Storage Controller": d["StorageController"],
                    "Removable": d["Removable"],
                }
                for d in disks
            },
        },
        "Runtime": {"Hostname": host},
    }
    return data


# ---------------------------------------------------------------------------------------------
# identifiers and annotations


def lowest_mac(root: str | Path = "/") -> str:
    """``mac`` auth id: lexicographically lowest MAC of a non-virtual NIC (not all zeros)."""
    macs = [
        n["MacAddress"]
        for n in _nics(Path(root), live=False).values()
        if n["IsVirtual"] == "false" and n["MacAddress"] and n["MacAddress"] != "00:00:00:00:00:00"
    ]
    if not macs:
        raise LookupError("no physical network interface with a MAC address")
    return min(macs)


def system_uuid(root: str | Path = "/", smbios: dict[str, Any] | None = None) -> str:
    """``sys-uuid`` auth id: the SMBIOS product UUID, refusing placeholder values."""
    value = ""
    if smbios is not None:
        v = _get_path(smbios, ["System Information", "UUID"])
        value = v if isinstance(v, str) else ""
    if not value:
        value = _dmi(Path(root), "product_uuid")
    if value.lower() in _BAD_UUIDS or value.startswith("Not "):
        raise LookupError(f"no usable SMBIOS system UUID ({value!r})")
    return value


def os_release(root: str | Path = "/") -> dict[str, str]:
    out: dict[str, str] = {}
    text = _read(Path(root), "etc/os-release") or _read(Path(root), "usr/lib/os-release")
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


_OS_FIELDS = {
    "NAME": "os.name",
    "VERSION": "os.version",
    "VERSION_ID": "os.version-id",
    "ID": "os.id",
    "PRETTY_NAME": "os.pretty-name",
    "IMAGE_ID": "os.image",
    "CPE_NAME": "os.cpe-name",
}


def client_annotations(
    *,
    reg_version: str,
    auth: str,
    registration_ip: str = "",
    no_toolkit: bool = False,
    root: str | Path = "/",
) -> dict[str, str]:
    out = {"reg-version": reg_version, "auth": auth}
    release = os_release(root)
    for key, name in _OS_FIELDS.items():
        if release.get(key):
            out[name] = release[key]
    if registration_ip:
        out["registration-ip"] = registration_ip
    if no_toolkit:
        out["os.unmanaged"] = "true"
    return out


def smbios_uuid_seed(uuid_text: str) -> int | None:
    """Elemental's random emulated-TPM seed: the UUID (dashes removed) as a hex big-int, truncated
    to int64 like Go's ``big.Int.Int64`` (low 64 bits, two's complement)."""
    digits = uuid_text.replace("-", "")
    try:
        value = int(digits, 16)
    except ValueError:
        return None
    low = value & 0xFFFFFFFFFFFFFFFF
    return low - (1 << 64) if low >= 1 << 63 else low
