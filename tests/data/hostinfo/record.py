"""Write the recorded /sys + /proc trees under tests/data/hostinfo (see README.md for provenance).

``record.py this-vm``  copies, file by file, what Elemental's hostinfo reads from the machine this
                      runs on (symlinks kept as links, with their own relative targets).
``record.py qemu-q35`` writes the hand-made tree of a QEMU q35 guest with DMI, several NIC kinds,
                      disks with udev data, a zram device and a bochs display.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _mirror(tree: Path, live: str) -> None:
    """Copy one live path into tree at its real location; a symlink is recreated, not followed."""
    parent = os.path.realpath(os.path.dirname(live))
    dst = tree / parent.lstrip("/") / os.path.basename(live)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if os.path.islink(live):
        if not dst.is_symlink():
            os.symlink(os.readlink(live), dst)
        return
    if os.path.isdir(live):
        dst.mkdir(exist_ok=True)
        return
    try:
        data = Path(live).read_bytes()
    except OSError:  # e.g. EINVAL from the speed of a link that is down: the reader sees no file
        return
    dst.write_bytes(data)


def record_this_vm(tree: Path) -> None:
    paths = ["/proc/cpuinfo", "/proc/meminfo", "/proc/sys/kernel/hostname"]
    cpu = "/sys/devices/system/cpu"
    for name in sorted(os.listdir(cpu)):
        if name.startswith("cpu") and name[3:].isdigit():
            paths += [f"{cpu}/{name}/topology/physical_package_id", f"{cpu}/{name}/topology/core_id"]
    mem = "/sys/devices/system/memory"
    paths.append(f"{mem}/block_size_bytes")
    paths += [f"{mem}/{n}/state" for n in sorted(os.listdir(mem)) if n.startswith("memory")]
    hp = "/sys/kernel/mm/hugepages"
    paths += [f"{hp}/{n}/nr_hugepages" for n in sorted(os.listdir(hp))]
    for name in sorted(os.listdir("/sys/class/net")):
        base = f"/sys/class/net/{name}"
        paths.append(base)
        paths += [f"{base}/{f}" for f in ("addr_assign_type", "address", "speed", "duplex", "operstate")]
        if os.path.islink(f"{base}/device"):
            paths += [f"{base}/device", f"{base}/device/subsystem"]
    for name in sorted(os.listdir("/sys/block")):
        base = f"/sys/block/{name}"
        paths.append(base)
        paths += [
            f"{base}/{f}"
            for f in ("size", "removable", "dev", "queue/rotational", "queue/physical_block_size")
        ]
    for p in paths:
        _mirror(tree, p)


def _w(tree: Path, rel: str, text: str) -> None:
    p = tree / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _ln(tree: Path, rel: str, target: str) -> None:
    p = tree / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, p)


def record_qemu_q35(tree: Path) -> None:
    # DMI as QEMU's q35 machine fills it (values of tests/data/dmidecode-qemu.txt); the kernel
    # creates no file for an absent SMBIOS string, so product_sku, product_family and board_* are missing.
    dmi = {
        "sys_vendor": "QEMU",
        "product_name": "Standard PC (Q35 + ICH9, 2009)",
        "product_version": "pc-q35-10.0",
        "product_serial": "EDGE_0042",
        "product_uuid": "5c0e6f1a-8b1d-4c7e-9a4e-2f3b1c0d9e71",
        "bios_vendor": "EFI Development Kit II / OVMF",
        "bios_version": "0.0.0",
        "bios_date": "02/06/2015",
        "chassis_vendor": "QEMU",
        "chassis_type": "1",
        "chassis_version": "pc-q35-10.0",
    }
    for k, v in dmi.items():
        _w(tree, f"sys/devices/virtual/dmi/id/{k}", v + "\n")
    _ln(tree, "sys/class/dmi/id", "../../devices/virtual/dmi/id")
    _w(tree, "proc/sys/kernel/hostname", "edge-q35\n")

    # Two sockets x two cores, one thread each.
    flags = (
        "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
        "sse2 ss syscall nx lm constant_tsc hypervisor"
    )
    blocks = []
    for i in range(4):
        blocks.append(
            f"processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
            f"model name\t: Intel Xeon Processor (Cascadelake)\nphysical id\t: {i // 2}\n"
            f"core id\t\t: {i % 2}\ncpu cores\t: 2\nflags\t\t: {flags}\nbogomips\t: 4589.21\n"
            "address sizes\t: 46 bits physical, 48 bits virtual\npower management:\n\n"
        )
        _w(tree, f"sys/devices/system/cpu/cpu{i}/topology/physical_package_id", f"{i // 2}\n")
        _w(tree, f"sys/devices/system/cpu/cpu{i}/topology/core_id", f"{i % 2}\n")
    _w(tree, "proc/cpuinfo", "".join(blocks))
    _w(
        tree,
        "proc/meminfo",
        "MemTotal:        2013628 kB\nMemFree:         1514192 kB\nMemAvailable:    1712044 kB\n",
    )
    _w(tree, "sys/devices/system/memory/block_size_bytes", "8000000\n")
    for i in range(18):  # 16 online blocks of 128 MiB, two offline
        _w(tree, f"sys/devices/system/memory/memory{i}/state", "online\n" if i < 16 else "offline\n")
    _w(tree, "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "0\n")

    pci = "sys/devices/pci0000:00"
    nics = [
        # name, device dir (relative to sys/devices), subsystem, addr_assign_type, mac, speed, duplex
        ("enp1s0", "pci0000:00/0000:00:02.0/0000:01:00.0", "pci", "0", "52:54:00:12:34:56", "1000", "full"),
        ("eth1", "pci0000:00/0000:00:03.0/virtio1", "virtio", "0", "52:54:00:12:34:01", "-1", "unknown"),
    ]
    for name, dev, bus, aat, mac, speed, duplex in nics:
        depth = dev.count("/") + 2  # from sys/devices/<dev>/<subsystem> up to sys/
        _ln(tree, f"sys/class/net/{name}", f"../../devices/{dev}/net/{name}")
        d = f"sys/devices/{dev}/net/{name}"
        for f, v in (
            ("addr_assign_type", aat),
            ("address", mac),
            ("speed", speed),
            ("duplex", duplex),
            ("operstate", "up"),
        ):
            _w(tree, f"{d}/{f}", v + "\n")
        _ln(tree, f"{d}/device", f"../../../{os.path.basename(dev)}")
        _ln(tree, f"sys/devices/{dev}/subsystem", "../" * depth + f"bus/{bus}")
    for name, aat, mac in (("br0", "3", "52:54:00:12:34:01"), ("lo", "0", "00:00:00:00:00:00")):
        _ln(tree, f"sys/class/net/{name}", f"../../devices/virtual/net/{name}")
        for f, v in (
            ("addr_assign_type", aat),
            ("address", mac),
            ("operstate", "up" if name == "br0" else "unknown"),
        ):
            _w(tree, f"sys/devices/virtual/net/{name}/{f}", v + "\n")

    disks = [
        # name, device dir, dev, sectors, rotational, removable, udev model
        (
            "sda",
            "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
            "8:0",
            "41943040",
            "1",
            "0",
            "QEMU_HARDDISK",
        ),
        (
            "sr0",
            "pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0/block/sr0",
            "11:0",
            "2097151",
            "1",
            "1",
            "QEMU_DVD-ROM",
        ),
        (
            "nvme0n1",
            "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
            "259:0",
            "20971520",
            "0",
            "0",
            "QEMU NVMe Ctrl",
        ),
        ("zram0", "virtual/block/zram0", "252:0", "8388608", "0", "0", ""),
        ("loop0", "virtual/block/loop0", "7:0", "0", "0", "0", ""),
        ("loop1", "virtual/block/loop1", "7:1", "204800", "0", "0", ""),
    ]
    for name, dev, devno, sectors, rot, rem, model in disks:
        _ln(tree, f"sys/block/{name}", f"../devices/{dev}")
        d = f"sys/devices/{dev}"
        for f, v in (
            ("size", sectors),
            ("removable", rem),
            ("dev", devno),
            ("queue/rotational", rot),
            ("queue/physical_block_size", "512"),
        ):
            _w(tree, f"{d}/{f}", v + "\n")
        if model:
            _w(
                tree,
                f"run/udev/data/b{devno}",
                f"S:disk/by-id/{name}\nE:ID_MODEL={model}\nE:ID_SERIAL={model}_{name}\nE:ID_TYPE=disk\n",
            )
    _w(
        tree,
        "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1/size",
        "2048\n",
    )
    _w(tree, "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/vendor", "ATA     \n")

    # A bochs display on 00:01.0, named from a two-entry pci.ids.
    gpu = f"{pci}/0000:00:01.0"
    _ln(tree, "sys/class/drm/card0", "../../devices/pci0000:00/0000:00:01.0/drm/card0")
    _ln(
        tree,
        "sys/class/drm/card0-Virtual-1",
        "../../devices/pci0000:00/0000:00:01.0/drm/card0/card0-Virtual-1",
    )
    _w(tree, f"{gpu}/drm/card0/dev", "226:0\n")
    _w(tree, f"{gpu}/drm/card0/card0-Virtual-1/status", "connected\n")
    _w(tree, f"{gpu}/modalias", "pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00\n")
    _w(tree, f"{gpu}/revision", "0x02\n")
    _ln(tree, f"{gpu}/driver", "../../../bus/pci/drivers/bochs-drm")
    _w(
        tree,
        f"{pci}/0000:00:02.0/0000:01:00.0/modalias",
        "pci:v00008086d000010D3sv00001AF4sd00001100bc02sc00i00\n",
    )
    _ln(tree, f"{pci}/0000:00:02.0/0000:01:00.0/driver", "../../../../bus/pci/drivers/e1000e")
    for drv in ("bochs-drm", "e1000e"):
        _w(tree, f"sys/bus/pci/drivers/{drv}/uevent", f"DRIVER={drv}\n")
    for addr, path in (("0000:00:01.0", "0000:00:01.0"), ("0000:01:00.0", "0000:00:02.0/0000:01:00.0")):
        _ln(tree, f"sys/bus/pci/devices/{addr}", f"../../../devices/pci0000:00/{path}")
    _w(
        tree,
        "usr/share/hwdata/pci.ids",
        "# two entries of the PCI ID database (https://pci-ids.ucw.cz/), enough for this tree\n"
        "1234  Technical Corp.\n\t1111  QEMU Virtual Video Controller\n"
        "8086  Intel Corporation\n\t10d3  82574L Gigabit Network Connection\n",
    )


def main() -> None:
    name = sys.argv[1]
    tree = HERE / name
    if tree.exists():
        shutil.rmtree(tree)
    {"this-vm": record_this_vm, "qemu-q35": record_qemu_q35}[name](tree)


if __name__ == "__main__":
    main()
