"""Read the sections of a unified kernel image (a PE/COFF file).

We boot each slot through a Type #1 entry with `linux`/`initrd`/`options` taken from the OS's UKI
rather than chain-loading the UKI itself: systemd-stub ignores the loader's command line whenever
Secure Boot is on, and the installer must set `root=` per slot. Parsing a PE section table is a
few lines, so no pefile/objcopy dependency on the seed or the OS.
"""

from __future__ import annotations

import struct
from pathlib import Path

from elemental_common.errors import die


def sections(data: bytes) -> dict[str, bytes]:
    if data[:2] != b"MZ" or len(data) < 0x40:
        raise ValueError("not a PE file (no MZ header)")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe : pe + 4] != b"PE\0\0":
        raise ValueError("not a PE file (no PE signature)")
    (count,) = struct.unpack_from("<H", data, pe + 6)
    (opt_size,) = struct.unpack_from("<H", data, pe + 20)
    table = pe + 24 + opt_size
    out: dict[str, bytes] = {}
    for i in range(count):
        raw_name, vsize, _vaddr, rawsize, rawptr = struct.unpack_from("<8sIIII", data, table + 40 * i)
        name = raw_name.rstrip(b"\0").decode("ascii", "replace")
        # raw data is padded to the file alignment; the virtual size is the real payload length
        length = min(vsize, rawsize) if vsize else rawsize
        out[name] = data[rawptr : rawptr + length]
    return out


class Uki:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            secs = sections(path.read_bytes())
        except (OSError, ValueError, struct.error) as e:
            die(
                f"{path}: cannot read the unified kernel image: {e}",
                "the OS image must ship a UKI in /boot/EFI/Linux",
            )
        if ".linux" not in secs:
            die(
                f"{path}: the UKI has no .linux section",
                "build the OS image with a UKI (mkosi UnifiedKernelImages=yes)",
            )
        self.linux = secs[".linux"]
        self.initrd = secs.get(".initrd", b"")
        self.cmdline = secs.get(".cmdline", b"").rstrip(b"\0").decode().strip()
        self.osrel = parse_os_release(secs.get(".osrel", b"").rstrip(b"\0").decode())
        self.uname = secs.get(".uname", b"").rstrip(b"\0").decode().strip()


def uki_from_parts(linux: bytes, initrd: bytes, cmdline: str, osrel: dict[str, str], path: Path) -> Uki:
    """A Uki from sections kept apart (a slot's kernel and initrd on the ESP, its recorded command
    line): what reset needs to write slot A's entry from recovery."""
    uki = Uki.__new__(Uki)
    uki.path, uki.linux, uki.initrd, uki.cmdline, uki.osrel, uki.uname = (
        path,
        linux,
        initrd,
        cmdline,
        osrel,
        "",
    )
    return uki


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out
