"""Hardware data: dmidecode parsing (recorded outputs in tests/data) and /sys + /proc readers
over a fake root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elemental_common import protocol as P
from elemental_register import hardware

DATA = Path(__file__).parent / "data"


def test_parse_qemu_dmidecode() -> None:
    data = hardware.parse_dmidecode((DATA / "dmidecode-qemu.txt").read_text())
    assert data["System Information"]["UUID"] == "5c0e6f1a-8b1d-4c7e-9a4e-2f3b1c0d9e71"
    assert data["System Information"]["Serial Number"] == "EDGE_0042"
    assert data["BIOS Information"]["Characteristics:"] == [
        "BIOS characteristics not supported",
        "Targeted content distribution is supported",
        "UEFI is supported",
        "System is a virtual machine",
    ]
    assert data["Processor Information"]["Family"] == "Other"
    assert data["Processor Information"]["Characteristics"] == "None"
    assert data["OEM Strings"] == {"String 1": "elemental-site=berlin", "String 2": "rack:42"}
    assert "End Of Table" not in data
    assert set(data) == {
        "BIOS Information",
        "System Information",
        "Chassis Information",
        "Processor Information",
        "OEM Strings",
    }


def test_parse_server_dmidecode() -> None:
    data = hardware.parse_dmidecode((DATA / "dmidecode-poweredge.txt").read_text())
    cpu = data["Processor Information"]
    # Two sockets share a title: the last record replaces the whole section, as in Elemental.
    assert cpu == {
        "Socket Designation": "CPU2",
        "Family": "Xeon",
        "Version": "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz",
        "Core Count": "16",
    }
    single = hardware.parse_dmidecode(
        (DATA / "dmidecode-poweredge.txt").read_text().split("Handle 0x0401")[0]
    )
    flags = single["Processor Information"]["Flags:"]
    assert flags[0] == "FPU (Floating-point unit on-chip)" and len(flags) == 3
    assert data["Base Board Information"]["Features:"] == ["Board is a hosting board", "Board is replaceable"]
    assert data["System Information"]["SKU Number"] == "SKU=NotProvided;ModelName=PowerEdge R640"
    assert "OEM-specific Type" not in data and "Header and Data:" not in json.dumps(data)
    assert hardware.system_uuid(smbios=data) == "4c4c4544-0058-4b10-8032-b7c04f4a5132"


def test_parse_quirks() -> None:
    text = (
        "Handle 0x1, DMI type 13, 22 bytes\nBIOS Language Information\n\tInstallable Languages: 2\n"
        "\t\ten|US|iso8859-1\n\t\tde|DE|iso8859-1\n\tCurrently Installed Language: en|US|iso8859-1\n"
        "\tPart Number: ABC   \n\nHandle 0x2, DMI type 12, 5 bytes\nSystem Configuration Options\n"
    )
    data = hardware.parse_dmidecode(text)
    # A value followed by sub-lines becomes the list of sub-lines; values are trimmed.
    assert data["BIOS Language Information"]["Installable Languages"] == [
        "en|US|iso8859-1",
        "de|DE|iso8859-1",
    ]
    assert data["BIOS Language Information"]["Part Number"] == "ABC"
    assert data["System Configuration Options"] == {}


@given(st.text(alphabet=st.sampled_from(list("ab: \t\nHandle")), max_size=300))
def test_parse_never_crashes(text: str) -> None:
    hardware.parse_dmidecode(text)


def test_read_smbios_runs_each_type() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        return (DATA / "dmidecode-qemu.txt").read_text() if argv[-1] == "1" else ""

    data = hardware.read_smbios(run)
    assert [c[-1] for c in calls] == ["0", "1", "2", "3", "4", "11"]
    assert data["System Information"]["Manufacturer"] == "QEMU"


def _write(root: Path, rel: str, content: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(content)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    r = tmp_path
    _write(
        r,
        "proc/cpuinfo",
        "".join(
            f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6130\n"
            f"physical id\t: {i // 4}\ncore id\t\t: {(i % 4) // 2}\nflags\t\t: fpu vme sse2\n\n"
            for i in range(8)
        ),
    )
    for i in range(8):  # ghw takes packages and cores from the topology, attributes from cpuinfo
        _write(r, f"sys/devices/system/cpu/cpu{i}/topology/physical_package_id", f"{i // 4}\n")
        _write(r, f"sys/devices/system/cpu/cpu{i}/topology/core_id", f"{(i % 4) // 2}\n")
    _write(r, "proc/meminfo", "MemTotal:       16318480 kB\nMemFree:  1 kB\n")
    _write(r, "sys/devices/system/memory/block_size_bytes", "8000000\n")
    for i in range(130):  # ghw counts the blocks whose state is "online"
        _write(r, f"sys/devices/system/memory/memory{i}/state", "online\n" if i < 128 else "offline\n")
    # /sys/class/net entries are links: virtual ones into devices/virtual/net, PCI ones to a
    # device whose subsystem is the PCI bus (ghw net_linux.go reads IsVirtual and PCIAddress so).
    for name, mac, dev in (
        ("eno1", "3c:ec:ef:00:00:02", "pci0000:00/0000:00:1f.6"),
        ("eno2", "3c:ec:ef:00:00:01", "pci0000:00/0000:00:1f.7"),
        ("virbr0", "52:54:00:00:00:00", ""),
        ("lo", "00:00:00:00:00:00", ""),
    ):
        target = f"{dev}/net/{name}" if dev else f"virtual/net/{name}"
        _write(r, f"sys/devices/{target}/address", mac + "\n")
        _write(r, f"sys/devices/{target}/addr_assign_type", "0\n")
        _write(r, f"sys/devices/{target}/speed", "1000\n")
        (r / "sys/class/net").mkdir(parents=True, exist_ok=True)
        (r / f"sys/class/net/{name}").symlink_to(f"../../devices/{target}")
        if dev:
            (r / f"sys/devices/{target}/device").symlink_to(f"../../../{dev.split('/')[-1]}")
            (r / f"sys/devices/{dev}/subsystem").symlink_to("../../../bus/pci")
    for name, sectors, rot, rem in (
        ("sda", "1953525168", "1", "0"),
        ("nvme0n1", "1000215216", "0", "0"),
        ("sr0", "2097151", "1", "1"),
        ("loop0", "100", "0", "0"),
        ("loop1", "0", "0", "0"),
    ):
        _write(r, f"sys/block/{name}/size", sectors + "\n")
        _write(r, f"sys/block/{name}/queue/rotational", rot + "\n")
        _write(r, f"sys/block/{name}/removable", rem + "\n")
    _write(r, "sys/class/dmi/id/product_uuid", "4c4c4544-0058-4b10-8032-b7c04f4a5132\n")
    _write(r, "sys/class/dmi/id/sys_vendor", "Dell Inc.\n")
    _write(r, "proc/sys/kernel/hostname", "edge-7\n")
    _write(
        r,
        "etc/os-release",
        'NAME="Elemental OS"\nID=elemental-os\nVERSION_ID="0.1"\nIMAGE_ID=elemental-os\n'
        'PRETTY_NAME="Elemental OS 0.1"\n# comment\n',
    )
    return r


def test_system_data_v2(fake_root: Path) -> None:
    data = hardware.system_data_v2(fake_root, addresses={"eno1": ([], ["fe80::ff:fe00:1"])})
    cpu = data["CPU"]
    assert cpu["TotalThreads"] == "8" and cpu["TotalProcessors"] == "2" and cpu["TotalCores"] == "4"
    assert (
        cpu["Processor"]["Model"] == "Intel(R) Xeon(R) Gold 6130"
        and cpu["Processors"]["1"]["NumThreads"] == "4"
    )
    assert data["Memory"]["TotalUsableBytes"] == str(16318480 * 1024)
    assert data["Memory"]["TotalPhysicalBytes"] == str(128 * 0x8000000)
    nics = data["Network"]["NICs"]
    assert set(nics) == {"0", "1", "2", "eno1", "eno2", "virbr0"} and data["Network"]["TotalNICs"] == "3"
    assert nics["0"] == nics["eno1"] and nics["2"]["Name"] == "virbr0"
    assert nics["virbr0"]["IsVirtual"] == "true" and nics["eno1"]["IsVirtual"] == "false"
    assert nics["eno1"]["IPv6Address"] == "fe80::ff:fe00:1"
    assert nics["eno1"]["PCIAddress"] == "0000:00:1f.6" and nics["virbr0"]["PCIAddress"] is None
    disks = data["Storage"]["Disks"]
    # like ghw: only loop devices of size 0 are left out
    assert data["Storage"]["TotalDisks"] == "4" and "loop1" not in disks
    assert disks["sda"]["DriveType"] == "HDD" and disks["nvme0n1"]["DriveType"] == "SSD"
    assert disks["sr0"]["DriveType"] == "ODD" and disks["loop0"]["StorageController"] == "loop"
    assert disks["nvme0n1"]["StorageController"] == "NVMe" and disks["sr0"]["Removable"] == "true"
    assert disks["0"] == disks["loop0"]  # index and name both address a disk (sorted by name)
    assert disks["sda"]["Size"] == str(1953525168 * 512)
    assert data["Runtime"]["Hostname"] == "edge-7" and data["Product"]["Vendor"] == "Dell Inc."
    legacy = data["System Data"]
    assert legacy["CPU"]["Total Cores"] == "4" and legacy["Block Devices"]["sda"]["Drive Type"] == "HDD"
    assert (
        legacy["Network"]["eno2"]["MacAddress"] == "3c:ec:ef:00:00:01"
        and legacy["Runtime"]["Hostname"] == "edge-7"
    )

    def leaves(path: str, node: object) -> list[tuple[str, object]]:
        if isinstance(node, dict):
            return [x for k, v in node.items() for x in leaves(f"{path}/{k}", v)]
        return [(path, node)]

    # Upstream's only non-string values: null PCI addresses and the legacy flag list.
    odd = [(p, v) for p, v in leaves("", data) if not isinstance(v, str)]
    assert odd == [
        ("/Network/NICs/2/PCIAddress", None),
        ("/Network/NICs/virbr0/PCIAddress", None),
        ("/System Data/CPU/Capabilities", ["fpu", "vme", "sse2"]),
    ]


def test_identifiers_and_annotations(fake_root: Path) -> None:
    assert hardware.lowest_mac(fake_root) == "3c:ec:ef:00:00:01"
    assert hardware.system_uuid(fake_root) == "4c4c4544-0058-4b10-8032-b7c04f4a5132"
    ann = hardware.client_annotations(
        reg_version="1.2.3", auth="tpm", registration_ip="10.0.2.15", no_toolkit=True, root=fake_root
    )
    assert ann == {
        "reg-version": "1.2.3",
        "auth": "tpm",
        "os.name": "Elemental OS",
        "os.version-id": "0.1",
        "os.id": "elemental-os",
        "os.pretty-name": "Elemental OS 0.1",
        "os.image": "elemental-os",
        "registration-ip": "10.0.2.15",
        "os.unmanaged": "true",
    }


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Not Settable",
        "Not Present",
        "None",
        "Unspecified",
        "unknown",  # what ghw, hence upstream's client, reports without DMI
        "00000000-0000-0000-0000-000000000000",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
    ],
)
def test_bad_system_uuid(tmp_path: Path, value: str) -> None:
    _write(tmp_path, "sys/class/dmi/id/product_uuid", value)
    with pytest.raises(LookupError, match="no usable SMBIOS system UUID"):
        hardware.system_uuid(tmp_path)
    dmi = hardware.parse_dmidecode(f"Handle 0x0100, DMI type 1\nSystem Information\n\tUUID: {value}\n")
    with pytest.raises(LookupError):
        hardware.system_uuid(tmp_path, smbios=dmi)


def test_no_dmi_no_system_uuid(tmp_path: Path) -> None:
    # A machine without /sys/class/dmi (like the one tests/data/hostinfo/this-vm was recorded on).
    with pytest.raises(LookupError, match="'unknown'"):
        hardware.system_uuid(tmp_path)
    assert not P.unusable_sys_uuid("5c0e6f1a-8b1d-4c7e-9a4e-2f3b1c0d9e71")


def test_uuid_seed_like_go() -> None:
    # big.Int.Int64 of the dashless UUID: the low 64 bits as a signed integer.
    assert hardware.smbios_uuid_seed("00000000-0000-0000-0000-000000000001") == 1
    assert hardware.smbios_uuid_seed("ffffffff-ffff-ffff-ffff-ffffffffffff") == -1
    assert hardware.smbios_uuid_seed("4c4c4544-0058-4b10-8032-b7c04f4a5132") == 0x8032B7C04F4A5132 - (1 << 64)
    assert hardware.smbios_uuid_seed("not-a-uuid") is None
