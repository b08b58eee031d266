"""File system images of a slot: the OS tree unpacked, its erofs (built, sized, copied), persistent's ext4."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from elemental_common.errors import die
from elemental_common.pe import Uki
from elemental_common.run import run
from elemental_register.installer import disk, durable, slot, source
from elemental_register.installer.slot import SlotLayer, Verity

EROFS_MAGIC = 0xE0F5E1E2
EROFS_SUPERBLOCK_OFFSET = 1024


@dataclass
class SystemImage:
    """What a slot needs: its erofs (prebuilt with dm-verity, or built from an unpacked OS tree
    of an older tar image), kernel/initrd, boot loader."""

    rootfs: Path | None  # the unpacked tree (tar images); None for a prebuilt slot
    erofs: Path | None  # where the built file system is (a slot device) once written
    size: int
    uki: Uki
    sd_boot: bytes
    os_release: dict[str, str]
    source: str
    compression: str = "none"
    slot: SlotLayer | None = None  # the prebuilt slot blob (an image of elemental_common.osimage)
    verity: Verity | None = None  # how the slot's entry opens it through dm-verity

    @property
    def version(self) -> str:
        return self.os_release.get("IMAGE_VERSION") or self.os_release.get("VERSION_ID") or "unknown"


def find_uki(rootfs: Path) -> Path:
    ukis = sorted((rootfs / "boot/EFI/Linux").glob("*.efi"))
    if not ukis:
        die(
            f"the OS image has no UKI in /boot/EFI/Linux (looked in {rootfs})",
            "build the OS image with a unified kernel image (see docs/architecture.md, OS image contract)",
        )
    return ukis[-1]  # sorted: the newest version when several exist


def prepare_image(src: source.Source, work: Path, compression: str = "none") -> SystemImage:
    """An image of prebuilt slots: its UKI and systemd-boot (the slot is streamed onto the
    partition later, `build_slot`). An older tar image: unpack the OS; the erofs is built later
    straight onto the slot, so the image's bytes are written once; `size` is an upper bound."""
    found = source.slot_image(src, work)
    if found is not None:
        layer, uki_path, sdb_path = found
        uki = Uki(uki_path)
        slot.check_uki(uki, layer.verity)
        return SystemImage(
            None,
            None,
            layer.size,
            uki,
            sdb_path.read_bytes(),
            uki.osrel,
            str(src),
            slot=layer,
            verity=layer.verity,
        )
    rootfs = source.unpack(src, work)
    uki = Uki(find_uki(rootfs))
    sdb = rootfs / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    if not sdb.is_file():
        die(
            "the OS image has no systemd-boot (/usr/lib/systemd/boot/efi/systemd-bootx64.efi)",
            "add systemd-boot-efi to the OS image",
        )
    return SystemImage(
        rootfs,
        None,
        estimate_erofs(rootfs),
        uki,
        sdb.read_bytes(),
        source.os_release(rootfs),
        str(src),
        compression,
    )


def estimate_erofs(rootfs: Path) -> int:
    """Upper bound of an uncompressed erofs of `rootfs`: data in 4 KiB blocks + per-inode metadata."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += (st.st_size + 4095) // 4096 * 4096 + 256 + len(name)
    return total + 4 * 1024 * 1024


def build_slot(image: SystemImage, dev: str, also: str | None = None) -> int:
    """The slot onto `dev` (and `also`): the prebuilt slot's block copy, else mkfs.erofs of the
    unpacked OS; returns the slot's size.

    `dev` is fsynced before this returns: the boot entry that points at the slot is written
    next, and a power cut must never leave an entry pointing at a half-written slot."""
    if image.slot is not None:
        image.slot.write(dev, also)
        image.size, image.erofs = image.slot.size, Path(dev)
        return image.size
    assert image.rootfs is not None and also is None
    cmd = ["mkfs.erofs", "-T0", "--quiet"]  # no -L: erofs-utils 1.5 lacks it; slots go by PARTUUID
    if image.compression and image.compression != "none":
        cmd.append(f"-z{image.compression}")
    run([*cmd, dev, str(image.rootfs)], hint="mkfs.erofs (erofs-utils) must be installed")
    durable.fsync_path(dev)
    image.size = erofs_size(dev)
    image.erofs = Path(dev)
    return image.size


def copy_blocks(src: Path | str, dst: str, length: int | None = None, also: str | None = None) -> None:
    """Copy `length` bytes (all of src by default) onto the start of `dst` (and of `also`),
    fsynced before this returns."""
    outs = [open(d, "r+b") for d in ([dst, also] if also else [dst])]
    try:
        with open(src, "rb") as fi:
            total = length if length is not None else os.fstat(fi.fileno()).st_size
            done = 0
            while done < total:
                buf = fi.read(min(8 << 20, total - done))
                if not buf:
                    die(f"{src}: short read at {done} of {total} bytes")
                for fo in outs:
                    fo.write(buf)
                done += len(buf)
        for fo in outs:
            fo.flush()
            os.fsync(fo.fileno())
    finally:
        for fo in outs:
            fo.close()


def erofs_size(dev: str) -> int:
    """The size of the erofs on `dev`, from its superblock (block count << block size bits)."""
    with open(dev, "rb") as f:
        f.seek(EROFS_SUPERBLOCK_OFFSET)
        sb = f.read(64)
    (magic,) = struct.unpack_from("<I", sb, 0) if len(sb) >= 4 else (0,)
    if magic != EROFS_MAGIC:
        die(f"{dev} holds no erofs file system", "the recovery partition is damaged; reinstall from the seed")
    blkszbits = sb[12]
    (blocks,) = struct.unpack_from("<I", sb, 36)
    return int(blocks) << blkszbits


@contextlib.contextmanager
def os_tree(image: SystemImage, work: Path) -> Iterator[Path]:
    """The OS tree of `image`: the unpacked one, or its written slot mounted read-only."""
    if image.rootfs is not None:
        yield image.rootfs
        return
    assert image.erofs is not None, "the slot is written first"
    mnt = work / "slot"
    mnt.mkdir(exist_ok=True)
    run(["mount", "-o", "ro", "-t", "erofs", str(image.erofs), str(mnt)])
    try:
        yield mnt
    finally:
        run(["umount", str(mnt)], check=False)


def format_persistent(layout: disk.Layout, var: Path) -> None:
    """(Re)create COS_PERSISTENT, seeded with the image's /var (mounted there at run time)."""
    part = layout.part("persistent")
    seed = ["-d", str(var)] if var.is_dir() else []
    run(["mkfs.ext4", "-q", "-F", "-L", disk.LABEL_PERSISTENT, "-U", part.uuid, *seed, part.device])
