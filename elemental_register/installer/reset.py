"""`elemental reset`: from recovery, wipe persistent (and OEM) and restore slot A from the recovery image."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from elemental_common.errors import die
from elemental_common.pe import Uki, uki_from_parts
from elemental_common.run import run
from elemental_register.installer import boot, disk, oem, source, system
from elemental_register.installer.image import (
    SystemImage,
    copy_blocks,
    erofs_size,
    find_uki,
    format_persistent,
)
from elemental_register.installer.progress import Progress, no_progress
from elemental_register.installer.slot import Verity

MAPPED_ROOT_NAME = "root"  # systemd-veritysetup-generator's device-mapper name for roothash=
SYS_BLOCK = Path("/sys/block")


def reset(
    config: dict[str, Any],
    progress: Progress | None = None,
    *,
    esp: Path | None = None,
    oem_dir: Path = Path("/oem"),
    state: dict[str, Any] | None = None,
    force: bool = False,
) -> None:
    """From recovery: wipe persistent (and OEM), put the recovery image back into slot A as the
    only system, rewrite the OEM files from the (new) registration config."""
    progress = progress or no_progress
    rs = (config.get("elemental") or {}).get("reset") or {}
    if system.boot_mode() != "recovery" and not force:
        die("reset only runs from the recovery system", "the reset plan boots recovery first")
    st = oem.load_system_state(oem_dir)
    layout = system.layout_from_state(st)
    esp = esp or boot.find_esp()
    for p in layout.parts:
        p.device = disk.partition_device(p.uuid)
    rec = st.get("recovery") or {}
    with tempfile.TemporaryDirectory(prefix="elemental-reset-") as tmp:
        tmpd = Path(tmp)
        rec_mnt = tmpd / "recovery"
        rec_mnt.mkdir()
        run(["mount", "-o", "ro", "-t", "erofs", _recovery_tree_device(layout, rec), str(rec_mnt)])
        try:
            image = SystemImage(
                rec_mnt,
                Path(layout.part("recovery").device),
                int(rec.get("size") or 0),
                _recovery_uki(esp, rec, rec_mnt),
                b"",
                source.os_release(rec_mnt),
                str(rec.get("source", "recovery")),
                verity=Verity(rec["roothash"], int(rec["hash_offset"])) if rec.get("roothash") else None,
            )
            if rs.get("reset-persistent", True):
                progress("formatting persistent", 10)
                format_persistent(layout, rec_mnt / "var")
        finally:
            run(["umount", str(rec_mnt)], check=False)
        progress("restoring system slot A", 30)
        size = image.size or erofs_size(layout.part("recovery").device)
        boot.remove_entries(esp, boot.slot_entry_id("a"))
        boot.remove_entries(esp, boot.slot_entry_id("b"))
        copy_blocks(layout.part("recovery").device, layout.part("a").device, size)  # fsynced
        run(["wipefs", "--all", "--quiet", layout.part("b").device], check=False)
        gen = int(st.get("generation", 1)) + 1
        image.size = size
        boot.slot_entry(esp, layout, image, "a", gen)
        st.update(generation=gen, upgrade=None, slots={"a": {**rec, "generation": gen}, "b": None})
        progress("writing OEM configuration", 80)
        if rs.get("reset-oem", True):
            _reformat_oem(layout, oem_dir)
        oem.oem_tree(oem_dir, config, state)
        (oem_dir / oem.OEM_RESET_MARK).unlink(missing_ok=True)
        (oem_dir / "reset-cloud-config.yaml").unlink(missing_ok=True)
        oem.save_system_state(oem_dir, st)
    run(["sync"], check=False)
    progress("reset", 100)
    system.power(rs, default_reboot=True)


def _recovery_tree_device(layout: disk.Layout, rec: dict[str, Any], sys_block: Path = SYS_BLOCK) -> str:
    """What to mount to read recovery's tree. Booted from a verity recovery, dm-verity holds the
    partition (a second mount of it is refused): its verified device, the root's own, is the same
    tree. Found by its device-mapper name, `root` (systemd-veritysetup-generator's): the OS image
    has no device-mapper udev rules, so /dev/mapper/root does not survive into the booted system."""
    if rec.get("roothash") and system.boot_mode() == "recovery":
        for dm in sorted(sys_block.glob("dm-*")):
            try:
                name = (dm / "dm/name").read_text().strip()
            except OSError:
                continue
            if name == MAPPED_ROOT_NAME:
                return f"/dev/{dm.name}"
    return str(layout.part("recovery").device)


def _recovery_uki(esp: Path, rec: dict[str, Any], rec_mnt: Path) -> Uki:
    """The kernel for slot A: a verity slot's UKI ships beside its erofs (it carries the erofs's
    root hash), so its kernel and initrd come from the recovery entry's copies on the ESP and its
    command line from the recovery record; an older slot has its UKI inside."""
    if not rec.get("roothash"):
        return Uki(find_uki(rec_mnt))
    kdir = esp / "EFI/elemental/recovery"
    try:
        linux, initrd = (kdir / "linux").read_bytes(), (kdir / "initrd").read_bytes()
    except OSError as e:
        die(f"cannot read the recovery kernel: {e}", "the ESP is damaged; reinstall from the seed")
    return uki_from_parts(linux, initrd, str(rec.get("cmdline", "")), source.os_release(rec_mnt), kdir)


def _reformat_oem(layout: disk.Layout, oem_dir: Path) -> None:
    dev = layout.part("oem").device
    mounted = os.path.ismount(oem_dir)
    if mounted:
        run(["umount", str(oem_dir)])
    run(["mkfs.ext4", "-q", "-F", "-L", disk.LABEL_OEM, dev])
    if mounted:
        run(["mount", dev, str(oem_dir)])
