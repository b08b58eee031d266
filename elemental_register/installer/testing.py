"""Helpers for tests and benchmarks: a tiny synthetic OS as an OCI layout, loop-backed disks."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from elemental_register.installer import pe
from elemental_register.run import run

SD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


def make_rootfs(root: Path, version: str = "1.0.0", payload_mib: int = 0) -> Path:
    """A directory shaped like the OS image contract: UKI, systemd-boot, os-release, /var."""
    (root / "usr/lib/systemd/boot/efi").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "boot/EFI/Linux").mkdir(parents=True)
    (root / "var/lib/demo").mkdir(parents=True)
    (root / "var/lib/demo/seed.txt").write_text("from the image's /var\n")
    (root / "usr/lib/os-release").write_text(
        f'ID=debian\nIMAGE_ID=elemental-os\nIMAGE_VERSION={version}\nPRETTY_NAME="Elemental OS"\n'
    )
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    sd = SD_BOOT.read_bytes() if SD_BOOT.is_file() else pe.build({".text": b"sd-boot"})
    (root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").write_bytes(sd)
    uki = pe.build(
        {
            ".osrel": (root / "usr/lib/os-release").read_bytes(),
            ".cmdline": b"console=ttyS0,115200 root=PARTUUID=dead rw quiet",
            ".uname": b"6.12.0-test",
            ".linux": b"KERNEL-" + version.encode() * 100,
            ".initrd": b"INITRD-" + version.encode() * 100,
        }
    )
    (root / f"boot/EFI/Linux/elemental-os_{version}.efi").write_bytes(uki)
    if payload_mib:
        # incompressible data, so benchmarks move real bytes
        with open(root / "usr/bin/payload", "wb") as f:
            for _ in range(payload_mib):
                f.write(os.urandom(1 << 20))
    return root


def make_oci(layout: Path, tag: str, rootfs: Path, work: Path) -> str:
    """Pack `rootfs` as a one-layer image `layout:tag` with umoci; returns "oci:<layout>:<tag>"."""
    if not (layout / "index.json").exists():
        run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:{tag}"])
    bundle = work / f"bundle-{tag}"
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)])
    for item in rootfs.iterdir():
        dst = bundle / "rootfs" / item.name
        if item.is_dir() and not item.is_symlink():
            shutil.copytree(item, dst, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dst, follow_symlinks=False)
    run(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)])
    shutil.rmtree(bundle)
    return f"oci:{layout}:{tag}"


@contextlib.contextmanager
def loop_disk(path: Path, size: int) -> Iterator[str]:
    with open(path, "wb") as f:
        f.truncate(size)
    dev = run(["losetup", "--find", "--show", "--partscan", str(path)]).stdout.strip()
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


@contextlib.contextmanager
def mounted(dev: str, where: Path, *opts: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", *opts, dev, str(where)])
    try:
        yield where
    finally:
        run(["umount", str(where)], check=False)
