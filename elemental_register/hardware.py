"""Hardware data a registering machine sends: SMBIOS (dmidecode), SystemDataV2 labels, annotations.

Every reader takes a ``root`` (default "/") so tests run on recorded trees, and the parsers
are pure functions over text.

* SMBIOS: ``dmidecode -t N`` for types 0, 1, 2, 3, 4, 11 parsed like Elemental's
  ``pkg/dmidecode`` (section title → field → value; indented sub-lines become lists; a
  field that only has sub-lines keeps its trailing ':' in the key, e.g. ``Flags:``).
* SystemDataV2: what Elemental's client sends, key for key and value for value: the
  ``hostinfo.ExtractLabels`` families (Product, BIOS, BaseBoard, Chassis, Memory, CPU, GPU,
  Network, Storage, Runtime; NICs and disks under their index and their name, IP lists as
  "0", "1", ... maps) plus the legacy ``System Data`` map, over the values ghw reads.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import os
import re
import socket
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from elemental_common import protocol as P
from elemental_common.errors import Die
from elemental_common.run import run as _run_tool
from elemental_common.run import which

SMBIOS_TYPES = ("0", "1", "2", "3", "4", "11")
_STOP_TITLES = {"OEM-specific Type", "End Of Table"}
# placeholders for "no UUID": dmidecode's, and ghw's "unknown" for an unreadable product_uuid
log = logging.getLogger(__name__)

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
# SystemDataV2: the map Elemental's register client sends. pkg/register/register.go
# (sendSystemData) sends hostinfo.ExtractLabels merged with hostinfo.ExtractLabelsLegacy
# (pkg/hostinfo/hostinfo.go), over the values jaypipes/ghw v0.12 reads from /sys and /proc
# (vendor/github.com/jaypipes/ghw/pkg/*/*_linux.go of elemental-operator). Facts carried over
# here, each with the file it comes from; the key list is tests/data/hostinfo/upstream-keys.txt.

UNKNOWN = "unknown"  # ghw pkg/util: what ghw reports for a value it cannot read

# ghw pkg/chassis/chassis.go: SMBIOS chassis type codes (DSP0134 7.4.1) and their names
_CHASSIS_TYPES = {
    "1": "Other", "2": "Unknown", "3": "Desktop", "4": "Low profile desktop", "5": "Pizza box",
    "6": "Mini tower", "7": "Tower", "8": "Portable", "9": "Laptop", "10": "Notebook",
    "11": "Hand held", "12": "Docking station", "13": "All in one", "14": "Sub notebook",
    "15": "Space-saving", "16": "Lunch box", "17": "Main server chassis", "18": "Expansion chassis",
    "19": "SubChassis", "20": "Bus Expansion chassis", "21": "Peripheral chassis",
    "22": "RAID chassis", "23": "Rack mount chassis", "24": "Sealed-case PC",
    "25": "Multi-system chassis", "26": "Compact PCI", "27": "Advanced TCA", "28": "Blade",
    "29": "Blade enclosure", "30": "Tablet", "31": "Convertible", "32": "Detachable",
    "33": "IoT gateway", "34": "Embedded PC", "35": "Mini PC", "36": "Stick PC",
}  # fmt: skip

# ghw pkg/block/block_linux.go diskTypes: name prefix -> (drive type, storage controller)
_DISK_PREFIXES = (
    ("fd", "FDD", "Unknown"),
    ("sd", "HDD", "SCSI"),
    ("hd", "HDD", "IDE"),
    ("vd", "HDD", "virtio"),
    ("nvme", "SSD", "NVMe"),
    ("sr", "ODD", "SCSI"),
    ("xvd", "HDD", "SCSI"),
    ("mmc", "SSD", "MMC"),
    ("loop", "virtual", "loop"),
)

# ghw pkg/pci/address: a PCI address, domain optional
_PCI_ADDRESS = re.compile(r"^(?:[0-9a-f]{0,4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$", re.IGNORECASE)

Addresses = Mapping[str, tuple[list[str], list[str]]]
"""Interface name -> (IPv4 addresses, IPv6 addresses), in the kernel's order."""


def _read(root: Path, rel: str) -> str:
    return _read_opt(root, rel) or ""


def _read_opt(root: Path, rel: str) -> str | None:
    """The trimmed content, or None when the file cannot be read (ghw tells the two apart)."""
    try:
        return (root / rel.lstrip("/")).read_text(errors="replace").strip()
    except OSError:
        return None


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _listdir(path: Path) -> list[str]:
    """Names in a directory sorted like Go's ioutil.ReadDir; [] when unreadable."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _safe_int(root: Path, rel: str) -> int:
    # ghw pkg/util SafeIntFromFile: -1 for a missing or non-integer file
    text = _read_opt(root, rel)
    return int(text) if text is not None and re.fullmatch(r"[+-]?\d+", text) else -1


def _dmi(root: Path, name: str) -> str:
    # ghw pkg/linuxdmi: /sys/class/dmi/id/<name>, "unknown" when unreadable (no DMI, not root)
    value = _read_opt(root, f"sys/class/dmi/id/{name}")
    return UNKNOWN if value is None else value


def _cpuinfo(text: str) -> dict[int, dict[str, str]]:
    """Logical processors of /proc/cpuinfo, as ghw pkg/cpu/cpu_linux.go reads them: a record ends at
    a blank line (an unterminated last record is dropped), a value ends at its second ':', and a
    record without 'processor' is merged into the next one."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    lps: dict[int, dict[str, str]] = {}
    attrs: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line:
            if "processor" in attrs:
                lp = attrs["processor"]
                lps[int(lp) if lp.isdigit() else 0] = attrs
                attrs = {}
            continue
        parts = line.split(":")
        if len(parts) >= 2:  # ghw would index out of range here; such a line carries nothing
            attrs[parts[0].strip()] = parts[1].strip()
    return lps


def _processors(root: Path) -> list[dict[str, Any]]:
    # ghw pkg/cpu/cpu_linux.go processorsGet: packages from /sys/devices/system/cpu/cpuN/topology,
    # attributes from the first logical processor (in directory order) of each package.
    lps = _cpuinfo(_read(root, "proc/cpuinfo"))
    procs: dict[int, dict[str, Any]] = {}
    base = "sys/devices/system/cpu"
    for name in _listdir(root / base):
        m = re.search(r"^cpu([0-9]+)$", name)
        if not m:
            continue
        lp = int(m.group(1))
        pid = _safe_int(root, f"{base}/cpu{lp}/topology/physical_package_id")
        proc = procs.get(pid)
        if proc is None:
            attrs = lps.get(lp)
            if attrs is None:
                continue
            caps: list[str] | None = None
            if attrs.get("flags"):  # x86
                caps = attrs["flags"].split(" ")
            elif attrs.get("Features"):  # arm64
                caps = attrs["Features"].split(" ")
            proc = {
                "ID": pid,
                "Model": attrs.get("model name") or attrs.get("uarch") or "",
                "Vendor": attrs.get("vendor_id") or attrs.get("isa") or "",
                "Capabilities": caps,
                "cores": set(),
                "threads": 0,
            }
            procs[pid] = proc
        proc["cores"].add(_safe_int(root, f"{base}/cpu{lp}/topology/core_id"))
        proc["threads"] += 1
    # ghw returns the packages in Go map order (random); sorted by ID they are at least stable.
    return [procs[k] for k in sorted(procs)]


def _cpu(procs: list[dict[str, Any]]) -> dict[str, Any]:
    # hostinfo.go ExtractLabels: CPU/Processors/<i>, CPU/Processor (= the first), totals
    cpu: dict[str, Any] = {}
    by_index = {
        str(i): {
            "Capabilities": ",".join(p["Capabilities"] or []),
            "ID": str(p["ID"]),
            "Model": p["Model"],
            "NumCores": str(len(p["cores"])),
            "NumThreads": str(p["threads"]),
            "Vendor": p["Vendor"],
        }
        for i, p in enumerate(procs)
    }
    if by_index:
        cpu["Processors"] = by_index
        cpu["Processor"] = dict(by_index["0"])
    cpu["TotalCores"] = str(sum(len(p["cores"]) for p in procs))
    cpu["TotalThreads"] = str(sum(p["threads"] for p in procs))
    cpu["TotalProcessors"] = str(len(procs))
    return cpu


def _meminfo_total(text: str) -> int:
    # ghw pkg/memory/memory_linux.go memoryTotalUsableBytesFromPath: the first MemTotal line
    for line in text.splitlines():
        parts = line.split(":")
        if "MemTotal" not in parts[0] or len(parts) < 2:
            continue
        raw = parts[1]
        in_kb = raw.endswith("kB")
        digits = raw.removesuffix("kB").strip()
        if not re.fullmatch(r"[+-]?\d+", digits):
            return -1
        return int(digits) * (1024 if in_kb else 1)
    return -1


def _physical_from_syslog(root: Path) -> int:
    # ghw memTotalPhysicalBytesFromSyslog: the kernel's "Memory: 123K/456K available" boot line
    logs = root / "var/log"
    for name in _listdir(logs):
        if not name.startswith("syslog"):
            continue
        try:
            opener: Any = gzip.open if name.endswith(".gz") else open
            with opener(logs / name, "rt", errors="replace") as f:
                for line in f:
                    m = re.search(r"Memory:\s+\d+K/(\d+)K", line)
                    if m:
                        return int(m.group(1)) * 1024
        except OSError:
            return -1
    return -1


def _memory(root: Path) -> dict[str, str] | None:
    """Memory/* (hostinfo.go: the ghw memory.Area fields); None when ghw fails (no MemTotal)."""
    usable = _meminfo_total(_read(root, "proc/meminfo"))
    if usable < 1:
        return None
    # ghw memTotalPhysicalBytes: online memory blocks x block size, else syslog, else usable
    physical = -1
    base = "sys/devices/system/memory"
    block = _read_opt(root, f"{base}/block_size_bytes")
    if block is not None and re.fullmatch(r"[0-9a-fA-F]+", block):
        physical = 0
        for name in _listdir(root / base):
            if not re.search(r"memory\d+$", name):
                continue
            state = _read_opt(root, f"{base}/{name}/state")
            if state is None:
                physical = -1
                break
            if state == "online":
                physical += int(block, 16)
    if physical < 0:
        physical = _physical_from_syslog(root)
    if physical < 1:
        physical = usable
    pages: list[str] = []
    for name in _listdir(root / "sys/kernel/mm/hugepages"):  # hugepages-2048kB -> 2097152
        size = name.split("-")[1][:-2] if "-" in name else ""
        if not size.isdigit():
            break
        pages.append(str(int(size) * 1024))
    return {
        "TotalPhysicalBytes": str(physical),
        "TotalUsableBytes": str(usable),
        # Go slices of numbers become "a, b" in hostinfo.go reflectValToInterface; an empty one ""
        "SupportedPageSizes": ", ".join(pages),
        "Modules": "",  # ghw never fills memory modules on Linux
    }


def parse_ethtool(text: str) -> dict[str, list[str]]:
    """``ethtool DEV`` output -> field -> words, as ghw pkg/net/net_linux.go parseNicAttrEthtool:
    the first line is skipped, a value ends at its second ':', "Not reported"/"Unknown" values are
    dropped, and lines without ':' continue the previous field."""
    fields: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines()[1:]:
        if ":" in line:
            parts = line.split(":")
            name = parts[0].strip()
            value = parts[1].strip().strip("[]")
            if value in ("Not reported", "Unknown"):
                continue
            words = value.split()
        else:
            words = line.strip().strip("[]").split()
        for word in words:
            fields.setdefault(name, []).append(word)
    return fields


def _ethtool(dev: str) -> dict[str, list[str]] | None:
    try:
        proc = _run_tool(["ethtool", dev], check=False, timeout=10)
    except (Die, OSError):
        return None
    return parse_ethtool(proc.stdout) if proc.returncode == 0 else None


def _pci_address(net_dir: Path, name: str) -> str | None:
    # ghw netDevicePCIAddress: class link -> device link -> its subsystem must be .../bus/pci;
    # anything else (virtio, USB, virtual) is JSON null on the wire.
    dest = _readlink(net_dir / name)
    if not dest:
        return None
    dev = os.path.normpath(net_dir / dest)
    dest = _readlink(Path(dev) / "device")
    if not dest:
        return None
    dev_path = os.path.normpath(os.path.join(dev, dest))
    if not _readlink(Path(dev_path) / "subsystem").endswith("/bus/pci"):
        return None
    return os.path.basename(dev_path)


def _unknown_bang(value: str) -> str:
    # hostinfo.go sanitizeHostInfoVal: ethtool's "Unknown!" speed/duplex becomes ""
    return "" if value.startswith("Unknown!") else value


def _nics(root: Path, *, tools: bool) -> list[dict[str, Any]]:
    """NICs as ghw pkg/net/net_linux.go reads them, in directory order, lo left out."""
    base = root / "sys/class/net"
    out = []
    for name in _listdir(base):
        if name == "lo":
            continue
        rel = f"sys/class/net/{name}"
        # ghw: the MAC only when the kernel says it is the permanent one (addr_assign_type 0)
        mac = _read(root, f"{rel}/address") if _read_opt(root, f"{rel}/addr_assign_type") == "0" else ""
        nic: dict[str, Any] = {
            "Name": name,
            "MacAddress": mac,
            "IsVirtual": "devices/virtual/net" in _readlink(base / name),
            "PCIAddress": _pci_address(base, name),
            "Speed": "",
            "Duplex": "",
            "SupportedLinkModes": None,
            "SupportedPorts": None,
            "AdvertisedLinkModes": None,
        }
        if tools:
            # with ethtool ghw takes link data from it (and nothing from sysfs if it fails)
            et = _ethtool(name) or {}
            nic["Speed"] = "".join(et.get("Speed", []))
            nic["Duplex"] = "".join(et.get("Duplex", []))
            nic["SupportedLinkModes"] = et.get("Supported link modes")
            nic["SupportedPorts"] = et.get("Supported ports")
            nic["AdvertisedLinkModes"] = et.get("Advertised link modes")
        else:
            nic["Speed"] = _read(root, f"{rel}/speed")
            nic["Duplex"] = _read(root, f"{rel}/duplex")
        out.append(nic)
    return out


def _use_tools(root: Path) -> bool:
    # ghw pkg/option EnvOrDefaultTools: external tools unless GHW_DISABLE_TOOLS is set; they only
    # describe the live system, so never for a recorded tree.
    return root == Path("/") and "GHW_DISABLE_TOOLS" not in os.environ and which("ethtool") is not None


def _network(nics: list[dict[str, Any]], addresses: Addresses) -> dict[str, Any]:
    # hostinfo.go ExtractLabels: Network/NICs/<index> and the same map under the NIC's name
    by_key: dict[str, Any] = {}
    for i, nic in enumerate(nics):
        v4, v6 = addresses.get(nic["Name"], ([], []))
        entry = {
            "AdvertisedLinkModes": ",".join(nic["AdvertisedLinkModes"] or []),
            "Duplex": _unknown_bang(nic["Duplex"]),
            "IsVirtual": str(nic["IsVirtual"]).lower(),
            "IPv4Address": v4[0] if v4 else "",
            "IPv4Addresses": {str(j): ip for j, ip in enumerate(v4)},
            "IPv6Address": v6[0] if v6 else "",
            "IPv6Addresses": {str(j): ip for j, ip in enumerate(v6)},
            "MacAddress": nic["MacAddress"],
            "Name": nic["Name"],
            "PCIAddress": nic["PCIAddress"],
            "Speed": _unknown_bang(nic["Speed"]),
            "SupportedLinkModes": ",".join(nic["SupportedLinkModes"] or []),
            "SupportedPorts": ",".join(nic["SupportedPorts"] or []),
        }
        by_key[str(i)] = entry
        # a copy, not the same object: YAML dumps of the map would otherwise grow anchors
        by_key[nic["Name"]] = {k: dict(v) if isinstance(v, dict) else v for k, v in entry.items()}
    return {"TotalNICs": str(len(nics)), "NICs": by_key}


def _udev_model(root: Path, name: str) -> str:
    # ghw diskModel: ID_MODEL from /run/udev/data/b<major:minor>, else "unknown"
    devno = _read_opt(root, f"sys/block/{name}/dev")
    if devno is None:
        return UNKNOWN
    data = _read_opt(root, f"run/udev/data/b{devno}")
    if data is None:
        return UNKNOWN
    for line in data.split("\n"):
        if line.startswith("E:ID_MODEL="):
            return line[len("E:ID_MODEL=") :]
    return UNKNOWN


def _disks(root: Path) -> list[dict[str, str]]:
    """Every /sys/block entry, as ghw pkg/block/block_linux.go counts them: zram, dm and md devices
    included, only loop devices of size 0 left out."""
    disks = []
    for name in _listdir(root / "sys/block"):
        rel = f"sys/block/{name}"
        drive, controller = "Unknown", "Unknown"
        for prefix, d, c in _DISK_PREFIXES:
            if name.startswith(prefix):
                drive, controller = d, c
                break
        if _safe_int(root, f"{rel}/queue/rotational") != 1:
            drive = "SSD"  # ghw: anything not rotational is an SSD (zram, loop, even sr)
        sectors = _read_opt(root, f"{rel}/size") or ""
        size = int(sectors) * 512 if sectors.isdigit() else 0
        if controller == "loop" and size == 0:
            continue
        disks.append(
            {
                "Size": str(size),
                "Name": name,
                "DriveType": drive,
                "StorageController": controller,
                "Removable": str(_read_opt(root, f"{rel}/removable") == "1").lower(),
                "Model": _udev_model(root, name),
            }
        )
    return disks


def _storage(disks: list[dict[str, str]]) -> dict[str, Any]:
    # hostinfo.go ExtractLabels: Storage/Disks/<index> and /<name>; the total counts them all
    by_key: dict[str, Any] = {}
    for i, d in enumerate(disks):
        by_key[str(i)] = d
        by_key[d["Name"]] = dict(d)
    return {"TotalDisks": str(len(disks)), "Disks": by_key}


def _pci_ids(root: Path) -> tuple[dict[str, str], dict[str, str]] | None:
    """Vendor and product names from the first pci.ids pcidb finds (jaypipes/pcidb context.go),
    None without one (pcidb fetches from the network only when asked to)."""
    candidates = [Path(os.path.expanduser("~/.cache/pci.ids"))] + [
        root / d / f for f in ("pci.ids", "pci.ids.gz") for d in ("usr/share/hwdata", "usr/share/misc")
    ]
    for path in candidates:
        try:
            if path.suffix == ".gz":
                with gzip.open(path, "rt", errors="replace") as f:
                    text = f.read()
            else:
                text = path.read_text(errors="replace")
        except OSError:
            continue
        vendors: dict[str, str] = {}
        products: dict[str, str] = {}
        vendor = ""
        in_class = False
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("C "):
                in_class = True
            elif not line.startswith("\t"):
                in_class = False
                vendor = line[0:4]
                vendors[vendor] = line[6:]
            elif not in_class and len(line) > 1 and line[1] != "\t" and vendor:
                products[vendor + line[1:5]] = line[7:]
        return vendors, products
    return None


def _graphics_cards(root: Path) -> list[dict[str, str] | None]:
    """DRM cards in directory order, each its PCI device info (ghw pkg/gpu, pkg/pci) or None when
    ghw has none for it: no pci.ids at all, or no modalias for the card's address."""
    drm = root / "sys/class/drm"
    names = _listdir(drm)
    addresses = []
    for name in names:
        if not name.startswith("card") or "-" in name:
            continue
        parts = _readlink(drm / name).split("/")
        if len(parts) >= 3:
            addresses.append(parts[-3])  # ../../devices/pci0000:00/<address>/drm/cardN
    if not addresses:
        return []
    db = _pci_ids(root)
    cards: list[dict[str, str] | None] = []
    for addr in addresses:
        dev = f"sys/bus/pci/devices/{addr}"
        try:  # ghw parseModaliasData checks the length of the raw file, newline included
            modalias = (root / dev / "modalias").read_text(errors="replace")
        except OSError:
            modalias = ""
        if db is None or not _PCI_ADDRESS.match(addr) or len(modalias) < 54:
            cards.append(None)
            continue
        vendor_id, product_id = modalias[9:13].lower(), modalias[18:22].lower()
        driver_link = root / dev / "driver"
        cards.append(
            {
                # ghw getDeviceDriver: os.Stat must succeed, i.e. the link's target exists
                "Driver": os.path.basename(_readlink(driver_link)) if driver_link.exists() else "",
                "ProductName": db[1].get(vendor_id + product_id, UNKNOWN),
                "VendorName": db[0].get(vendor_id, UNKNOWN),
            }
        )
    return cards


def _gpu(cards: list[dict[str, str] | None]) -> dict[str, Any]:
    # hostinfo.go ExtractLabels: cards with device info, counted and indexed; the first one's
    # keys also sit directly in GPU/GraphicsCards (e.g. ${GPU/GraphicsCards/Driver})
    if not cards:
        return {}
    by_key: dict[str, Any] = {}
    count = 0
    for card in cards:
        if card is None:
            continue
        by_key[str(count)] = dict(card)
        if "Driver" not in by_key:
            by_key.update(card)
        count += 1
    return {"GraphicsCards": by_key, "TotalCards": str(count)}


def netlink_addresses() -> dict[str, tuple[list[str], list[str]]]:
    """Every interface's IP addresses from one RTM_GETADDR dump, as Go's net.Interface.Addrs
    (which pkg/util/net.go calls) reads them: IFA_LOCAL when present, else IFA_ADDRESS; IPv4 before
    IPv6, each in the kernel's order; an IPv4-mapped IPv6 address counts as IPv4 (Go's To4)."""
    nlmsg_done, nlmsg_error, rtm_newaddr, rtm_getaddr = 3, 2, 20, 22
    out: dict[str, tuple[list[str], list[str]]] = {}
    names: dict[int, str] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(5)
        # nlmsghdr (len, type, flags=NLM_F_REQUEST|NLM_F_DUMP, seq, pid) + ifaddrmsg(AF_UNSPEC)
        s.send(struct.pack("=IHHII", 24, rtm_getaddr, 0x301, 1, 0) + struct.pack("=BBBBI", 0, 0, 0, 0, 0))
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, off)
                if length < 16 or mtype == nlmsg_done:
                    return out
                if mtype == nlmsg_error:
                    raise OSError("netlink RTM_GETADDR failed")
                if mtype == rtm_newaddr:
                    family, _plen, _flags, _scope, index = struct.unpack_from("=BBBBI", data, off + 16)
                    attrs: dict[int, bytes] = {}
                    a = off + 24
                    while a + 4 <= off + length:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        attrs.setdefault(atype, data[a + 4 : a + alen])
                        a += (alen + 3) & ~3
                    raw = attrs.get(2) or attrs.get(1)  # IFA_LOCAL, IFA_ADDRESS
                    if raw is not None and index not in names:
                        try:
                            names[index] = socket.if_indextoname(index)
                        except OSError:
                            names[index] = ""
                    name = names.get(index, "")
                    if raw is not None and name:
                        v4, v6 = out.setdefault(name, ([], []))
                        if family == socket.AF_INET and len(raw) >= 4:
                            v4.append(socket.inet_ntop(socket.AF_INET, raw[:4]))
                        elif family == socket.AF_INET6 and len(raw) >= 16:
                            ip6 = ipaddress.IPv6Address(raw[:16])
                            if ip6.ipv4_mapped:
                                v4.append(str(ip6.ipv4_mapped))
                            else:
                                v6.append(str(ip6))
                off += (length + 3) & ~3


def _live_addresses() -> dict[str, tuple[list[str], list[str]]]:
    try:
        return netlink_addresses()
    except OSError as exc:
        log.warning("cannot list IP addresses (netlink): %s", exc)
        return {}


def hostname(root: str | Path = "/") -> str:
    root = Path(root)
    if root == Path("/"):
        return socket.gethostname()
    return _read(root, "proc/sys/kernel/hostname")


def system_data_v2(
    root: str | Path = "/", addresses: Addresses | None = None, tools: bool | None = None
) -> dict[str, Any]:
    """The SystemDataV2 map of Elemental's register client, read from ``root``.

    ``addresses`` gives each interface's IPs; by default the live system's (netlink), or none
    for a recorded tree. ``tools`` runs ethtool for link data as ghw does; by default only on the
    live system, with ethtool installed and GHW_DISABLE_TOOLS unset.

    Every value is a string, except where upstream's is not: PCIAddress is null for a NIC that is
    not on PCI, and ``System Data/CPU/Capabilities`` is a list (null without flags), so templates
    render, or fail to, exactly as for upstream's client.
    """
    r = Path(root)
    live = r == Path("/")
    addrs: Addresses = addresses if addresses is not None else (_live_addresses() if live else {})
    procs = _processors(r)
    memory = _memory(r)
    nics = _nics(r, tools=_use_tools(r) if tools is None else tools)
    disks = _disks(r)
    cards = _graphics_cards(r)
    host = hostname(r)
    chassis_type = _dmi(r, "chassis_type")
    data: dict[str, Any] = {
        # ghw pkg/{product,bios,baseboard,chassis}/*_linux.go: one /sys/class/dmi/id file each
        "Product": {
            "Family": _dmi(r, "product_family"),
            "Name": _dmi(r, "product_name"),
            "Vendor": _dmi(r, "sys_vendor"),
            "SerialNumber": _dmi(r, "product_serial"),
            "UUID": _dmi(r, "product_uuid"),
            "SKU": _dmi(r, "product_sku"),
            "Version": _dmi(r, "product_version"),
        },
        "BIOS": {
            "Vendor": _dmi(r, "bios_vendor"),
            "Version": _dmi(r, "bios_version"),
            "Date": _dmi(r, "bios_date"),
        },
        "BaseBoard": {
            "AssetTag": _dmi(r, "board_asset_tag"),
            "SerialNumber": _dmi(r, "board_serial"),
            "Vendor": _dmi(r, "board_vendor"),
            "Version": _dmi(r, "board_version"),
            "Product": _dmi(r, "board_name"),
        },
        "Chassis": {
            "AssetTag": _dmi(r, "chassis_asset_tag"),
            "SerialNumber": _dmi(r, "chassis_serial"),
            "Type": chassis_type,
            "TypeDescription": _CHASSIS_TYPES.get(chassis_type, UNKNOWN),
            "Vendor": _dmi(r, "chassis_vendor"),
            "Version": _dmi(r, "chassis_version"),
        },
        "Memory": dict(memory) if memory else {},
        "CPU": _cpu(procs),
        "GPU": _gpu(cards),
        "Network": _network(nics, addrs),
        "Storage": _storage(disks),
        "Runtime": {"Hostname": host},
    }
    data["System Data"] = _legacy(procs, memory, nics, disks, cards, host)
    return data


def _legacy(
    procs: list[dict[str, Any]],
    memory: dict[str, str] | None,
    nics: list[dict[str, Any]],
    disks: list[dict[str, str]],
    cards: list[dict[str, str] | None],
    host: str,
) -> dict[str, Any]:
    """hostinfo.go ExtractLabelsLegacy: the <= 1.7 ``System Data`` map, sent alongside."""
    cpu: dict[str, Any] = {}
    cores, threads = sum(len(p["cores"]) for p in procs), sum(p["threads"] for p in procs)
    # upstream leaves out zero counts (ghw cannot count aarch64 cores)
    if cores > 0:
        cpu["Total Cores"] = str(cores)
    if threads > 0:
        cpu["Total Threads"] = str(threads)
    if procs:
        cpu["Model"] = procs[0]["Model"]
        cpu["Vendor"] = procs[0]["Vendor"]
        cpu["Capabilities"] = procs[0]["Capabilities"]  # a JSON list here, not a string
    gpu: dict[str, str] = {}
    if cards and cards[0] is not None:  # the first card only, and only when it has device info
        gpu = {"Model": cards[0]["ProductName"], "Vendor": cards[0]["VendorName"]}
    network: dict[str, Any] = {"Number Interfaces": str(len(nics))}
    for nic in nics:
        network[nic["Name"]] = {
            "Name": nic["Name"],
            "MacAddress": nic["MacAddress"],
            "IsVirtual": str(nic["IsVirtual"]).lower(),
        }
    block: dict[str, Any] = {"Number Devices": str(len(disks))}
    for d in disks:
        block[d["Name"]] = {
            "Size": d["Size"],
            "Name": d["Name"],
            "Drive Type": d["DriveType"],
            "Storage Controller": d["StorageController"],
            "Removable": d["Removable"],
        }
    mem = (
        {
            "Total Physical Bytes": memory["TotalPhysicalBytes"],
            "Total Usable Bytes": memory["TotalUsableBytes"],
        }
        if memory
        else {}
    )
    return {
        "Memory": mem,
        "CPU": cpu,
        "GPU": gpu,
        "Network": network,
        "Block Devices": block,
        "Runtime": {"Hostname": host},
    }


# ---------------------------------------------------------------------------------------------
# identifiers and annotations


def lowest_mac(root: str | Path = "/") -> str:
    """``mac`` auth id, as pkg/plainauth/register.go getHostMacAddr: the lowest (string order)
    MAC of a non-virtual NIC, leaving out empty and all-zero ones."""
    macs: list[str] = [
        n["MacAddress"]
        for n in _nics(Path(root), tools=False)
        if not n["IsVirtual"] and n["MacAddress"] and n["MacAddress"] != "00:00:00:00:00:00"
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
    if P.unusable_sys_uuid(value):
        raise LookupError(
            f"no usable SMBIOS system UUID ({value!r}): sys-uuid needs a machine with a real DMI "
            "product UUID; use auth tpm or mac on this one"
        )
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
