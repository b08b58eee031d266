"""SystemDataV2 on recorded /sys + /proc trees against upstream: the map upstream's own hostinfo
produced on the same trees (tests/data/hostinfo/*.golden.json), the key list read from upstream's
source (upstream-keys.txt), and the templates an operator renders from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elemental_operator.registration.templater import Templater, ValueNotFound
from elemental_register import hardware

DATA = Path(__file__).parent / "data" / "hostinfo"
TREES = ["this-vm", "qemu-q35"]


def _addresses(tree: str) -> dict[str, tuple[list[str], list[str]]]:
    """The interfaces' addresses upstream saw (``ip -j addr`` in the namespace of golden/run.sh)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for link in json.loads((DATA / f"{tree}.ip-addr.json").read_text()):
        infos = link.get("addr_info", [])
        out[link["ifname"]] = (
            [a["local"] for a in infos if a["family"] == "inet"],
            [a["local"] for a in infos if a["family"] == "inet6"],
        )
    return out


def _ours(tree: str, **kw: Any) -> dict[str, Any]:
    return hardware.system_data_v2(DATA / tree, addresses=_addresses(tree), **kw)


def _golden(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


@pytest.mark.parametrize("tree", TREES)
def test_same_map_as_upstream(tree: str) -> None:
    ours, upstream = _ours(tree), _golden(f"{tree}.golden.json")
    assert ours == upstream
    # and the same bytes on the wire, up to key order (Go sorts map keys)
    assert json.dumps(ours, sort_keys=True) == json.dumps(upstream, sort_keys=True)


@pytest.mark.integration  # runs the replaying ethtool script
def test_same_map_as_upstream_with_ethtool(monkeypatch: pytest.MonkeyPatch) -> None:
    # ghw takes speed, duplex and link modes from ethtool when it is installed.
    monkeypatch.setenv("PATH", f"{DATA / 'ethtool'}{os.pathsep}{os.environ['PATH']}")
    ours = _ours("qemu-q35", tools=True)
    assert ours == _golden("qemu-q35.ethtool.golden.json")
    nic = ours["Network"]["NICs"]["enp1s0"]
    assert nic["Speed"] == "1000Mb/s" and nic["SupportedPorts"] == "TP"
    assert (
        nic["AdvertisedLinkModes"] == "10baseT/Half,10baseT/Full,100baseT/Half,100baseT/Full,1000baseT/Full"
    )
    assert ours["Network"]["NICs"]["eth1"]["Duplex"] == ""  # "Unknown! (255)" is dropped


def test_parse_ethtool() -> None:
    fields = hardware.parse_ethtool((DATA / "ethtool/enp1s0.txt").read_text())
    assert fields["Speed"] == ["1000Mb/s"] and fields["Supported ports"] == ["TP"]
    assert "Supported FEC modes" not in fields  # "Not reported"
    assert fields["MDI-X"] == ["off", "(auto)"]
    # a line without ':' continues the field before it
    assert fields["Current message level"] == ["0x00000007", "(7)", "drv", "probe", "link"]


# -- the key structure ------------------------------------------------------------------------

_PLACEHOLDER = {"<i>": r"\d+", "<nic>": r"[^/]+", "<disk>": r"[^/]+", "<name>": r"[^/]+"}


def _spec() -> list[tuple[str, re.Pattern[str], set[str], bool]]:
    out = []
    for line in (DATA / "upstream-keys.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        path, types, *rest = line.split("\t")
        rx = "/".join(_PLACEHOLDER.get(part, re.escape(part)) for part in path.split("/"))
        out.append((path, re.compile(rx + "$"), set(types.split(",")), rest == ["optional"]))
    return out


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{path}/{k}" if path else k)
    else:
        yield path, node


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return "list"
    return "str" if isinstance(value, str) else type(value).__name__


def check_structure(data: dict[str, Any]) -> None:
    """Every value sits at a path of the key list with one of its types; every path that is not
    optional is there; every NIC, disk, processor and card has all of its keys."""
    spec = _spec()
    seen: set[str] = set()
    items: dict[str, dict[str, set[str]]] = {}
    for path, value in _leaves(data):
        hits = [s for s in spec if s[1].match(path)]
        # a NIC or disk named like a key could match twice; upstream's key would win in the map
        assert hits, f"{path}: not one of upstream's keys"
        pattern, _rx, types, _opt = hits[0]
        assert _type(value) in types, f"{path}: {value!r} is not {types}"
        seen.add(pattern)
        if "<" in pattern:
            parts, concrete = pattern.split("/"), path.split("/")
            last = max(i for i, p in enumerate(parts) if p.startswith("<"))
            group = "/".join(parts[: last + 1])
            items.setdefault(group, {}).setdefault("/".join(concrete[: last + 1]), set()).add(pattern)
    for pattern, _rx, _types, optional in spec:
        if not optional and "<" not in pattern:
            assert pattern in seen, f"{pattern} is missing"
    for group, members in items.items():
        required = {p for p, _rx, _t, opt in spec if not opt and p.startswith(group + "/")}
        for item, have in members.items():
            assert required <= have, f"{item} lacks {sorted(required - have)}"


@pytest.mark.parametrize("name", [f"{t}.golden.json" for t in TREES] + ["qemu-q35.ethtool.golden.json"])
def test_key_list_describes_upstream(name: str) -> None:
    """The list was written by reading upstream's source; its own output agrees with it."""
    check_structure(_golden(name))


@pytest.mark.parametrize("tree", TREES)
def test_our_structure(tree: str) -> None:
    data = _ours(tree)
    check_structure(data)
    nics, disks = data["Network"]["NICs"], data["Storage"]["Disks"]
    for group, total in ((nics, data["Network"]["TotalNICs"]), (disks, data["Storage"]["TotalDisks"])):
        by_index = {k: v for k, v in group.items() if k.isdigit()}
        assert sorted(by_index, key=int) == [str(i) for i in range(int(total))]
        assert all(group[v["Name"]] == v for v in by_index.values())  # the same map under its name


def test_structure_check_catches_a_wrong_shape() -> None:
    data = _ours("qemu-q35")
    data["Network"]["NICs"]["eth1"]["IPv4Addresses"] = "10.0.2.15"  # today's old shape: a string
    with pytest.raises(AssertionError):
        check_structure(data)
    data = _ours("qemu-q35")
    del data["Storage"]["Disks"]["1"]["Model"]
    with pytest.raises(AssertionError, match="lacks"):
        check_structure(data)


# -- templates --------------------------------------------------------------------------------

RENDERED = {
    "this-vm": {
        "${Network/NICs/0/MacAddress}": "02:fc:00:00:00:01",
        "${Network/NICs/eth0/IPv4Addresses/0}": "192.0.2.2",
        "${Network/NICs/eth0/IPv6Addresses/1}": "fe80::fc:ff:fe00:1",
        "${Storage/TotalDisks}": "2",  # vda and zram0 (the empty loops are not disks)
        "${Storage/Disks/zram0/DriveType}": "SSD",
        "${Product/UUID}": "unknown",  # no DMI on this machine
        "m-${Network/TotalNICs}-${CPU/Processor/NumCores}": "m-3-2",
        "${System Data/Block Devices/Number Devices}": "2",
    },
    "qemu-q35": {
        "${Network/NICs/0/Name}": "br0",
        "${Network/NICs/1/MacAddress}": "52:54:00:12:34:56",
        "${Network/NICs/enp1s0/IPv4Addresses/1}": "10.0.2.16",
        "${Network/NICs/enp1s0/IPv4Address}": "10.0.2.15",
        "${Network/NICs/enp1s0/PCIAddress}": "0000:01:00.0",
        "${Storage/TotalDisks}": "5",  # loop1, nvme0n1, sda, sr0 and zram0
        "${Storage/Disks/4/Name}": "zram0",
        "${CPU/Processors/1/ID}": "1",
        "${CPU/Processor/Capabilities}": (
            "fpu,vme,de,pse,tsc,msr,pae,mce,cx8,apic,sep,mtrr,pge,mca,cmov,pat,pse36,clflush,"
            "mmx,fxsr,sse,sse2,ss,syscall,nx,lm,constant_tsc,hypervisor"
        ),
        "${GPU/GraphicsCards/ProductName}": "QEMU Virtual Video Controller",
        "${Chassis/TypeDescription}": "Other",
        "${Memory/TotalPhysicalBytes}": str(16 * 128 << 20),
    },
}
# Values upstream does not render either: null, a list, a missing IP index, a map.
UNRENDERED = [
    "${Network/NICs/eth1/PCIAddress}",
    "${System Data/CPU/Capabilities}",
    "${Network/NICs/eth1/IPv4Addresses/0}",
    "${Network/NICs/enp1s0/IPv4Addresses}",
]


@pytest.mark.parametrize("tree", TREES)
def test_templates_render_as_for_upstream(tree: str) -> None:
    for source in (_ours(tree), _golden(f"{tree}.golden.json")):
        t = Templater()
        t.fill(json.loads(json.dumps(source)))  # what the operator decodes from the frame
        for template, expected in RENDERED[tree].items():
            assert t.render(template) == expected, template
        if tree == "qemu-q35":
            for template in UNRENDERED:
                with pytest.raises(ValueNotFound):
                    t.render(template)


# -- identifiers ------------------------------------------------------------------------------


def test_mac_identifier_on_recorded_trees() -> None:
    assert hardware.lowest_mac(DATA / "this-vm") == "02:fc:00:00:00:01"  # ifb* are virtual
    # eth1 (virtio) is lower than enp1s0; br0 is virtual and has no permanent MAC
    assert hardware.lowest_mac(DATA / "qemu-q35") == "52:54:00:12:34:01"


def test_sys_uuid_refused_without_dmi() -> None:
    with pytest.raises(LookupError, match="'unknown'"):
        hardware.system_uuid(DATA / "this-vm")
    assert hardware.system_uuid(DATA / "qemu-q35") == "5c0e6f1a-8b1d-4c7e-9a4e-2f3b1c0d9e71"


# -- live addresses ---------------------------------------------------------------------------

_NETNS_SETUP = """
set -e
ip link set lo up
ip link add eth0 type veth peer name peer0
ip link set eth0 addrgenmode none
ip link set eth0 up
ip addr add 10.9.0.1/24 dev eth0
ip addr add 10.9.0.7/16 dev eth0
ip addr add 10.9.1.1 peer 10.9.1.2 dev eth0
ip -6 addr add fd00::9/64 dev eth0 nodad
ip -6 addr add fe80::9/64 dev eth0 nodad
exec "$@"
"""


@pytest.mark.integration  # root: a private network namespace with veth interfaces
def test_netlink_addresses_in_a_namespace() -> None:
    """Our netlink dump on a live (private) network, with several addresses per family and a
    point-to-point one, where Go reports the local address and not the peer."""
    code = (
        "import json; from elemental_register import hardware as h; print(json.dumps(h.netlink_addresses()))"
    )
    try:
        proc = subprocess.run(
            ["unshare", "-n", "sh", "-c", _NETNS_SETUP, "sh", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no unshare")
    if proc.returncode != 0 and ("Operation not permitted" in proc.stderr or "unshare failed" in proc.stderr):
        pytest.skip(f"cannot make a network namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["eth0"] == [["10.9.0.1", "10.9.0.7", "10.9.1.1"], ["fd00::9", "fe80::9"]]
    assert got["lo"] == [["127.0.0.1"], ["::1"]] and set(got) == {"lo", "eth0"}
