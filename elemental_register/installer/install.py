"""`elemental install`: partition the chosen disk and write slot A, recovery, persistent, OEM and the ESP."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from elemental_common.errors import die
from elemental_common.run import run
from elemental_register.installer import boot, disk, mounts, oem, source, system
from elemental_register.installer.image import (
    SystemImage,
    build_slot,
    copy_blocks,
    format_persistent,
    os_tree,
    prepare_image,
)
from elemental_register.installer.progress import Progress, no_progress


def install(
    config: dict[str, Any],
    progress: Progress | None = None,
    *,
    state: dict[str, Any] | None = None,
    disks: list[disk.Disk] | None = None,
    workdir: str | None = None,
) -> str:
    """Install onto the disk chosen by config; returns the device. Every check runs before the
    disk is written: unknown device, busy or too small disk, unreadable image."""
    progress = progress or no_progress
    el = config.get("elemental") or {}
    inst = el.get("install") or {}
    progress("checking configuration", 0)
    if inst.get("iso"):
        die("install.iso is not supported", "put the OS on the seed medium or use install.system-uri")
    device = disk.select_device(inst, disks if disks is not None else disk.list_disks())
    target = disk.disk_info(device)
    if target.readonly:
        die(f"install device {device} is read-only")
    disk.check_not_in_use(target)
    src = source.check(source.parse(inst.get("system-uri")))
    with tempfile.TemporaryDirectory(prefix="elemental-install-", dir=workdir) as tmp:
        progress("unpacking the OS image", 5)
        image = prepare_image(src, Path(tmp), str(inst.get("compression", "none")))
        if inst.get("no-format"):
            layout = _existing_layout(target, image)
        else:
            layout = disk.plan_layout(target.size, image.size, inst.get("partitions"))
        progress("partitioning", 40)
        if not inst.get("no-format"):
            disk.write_table(target, layout)
        deploy(layout, image, config, state, Path(tmp), progress)
    progress("installed", 100)
    system.power(inst)
    return device


def _existing_layout(target: disk.Disk, image: SystemImage) -> disk.Layout:
    by_name = {p.get("name"): p for p in disk.read_table(target.path)}
    layout = disk.plan_layout(10**15, image.size)
    for p in layout.parts:
        found = by_name.get(p.label)
        if not found:
            die(
                f"install.no-format: {target.path} has no partition named {p.label}",
                "partition the disk as docs/installer.md describes, or drop no-format",
            )
        p.uuid, p.device, p.size = found["uuid"].lower(), found["node"], int(found["size"]) * 512
    return layout


def deploy(
    layout: disk.Layout,
    image: SystemImage,
    config: dict[str, Any],
    reg_state: dict[str, Any] | None,
    tmp: Path,
    progress: Progress,
) -> None:
    """Write every file system of a freshly partitioned disk. The ESP comes last: until it
    exists the disk does not boot, so firmware falls through to the seed and an install cut
    off half way is simply run again."""
    for role in ("a", "recovery"):
        if layout.part(role).size and image.size > layout.part(role).size:
            die(f"the OS image ({image.size >> 20} MiB) does not fit the {role} partition")
    progress("writing system slot A and recovery", 50)
    if image.slot is not None:
        # a prebuilt slot: one read of the blob feeds both partitions
        build_slot(image, layout.part("a").device, also=layout.part("recovery").device)
    elif mounts.on_tmpfs(tmp):
        # build in RAM, then one read feeds both partitions: the disk sees only the two writes
        f = tmp / "system.erofs"
        build_slot(image, str(f))
        copy_blocks(f, layout.part("a").device, image.size, also=layout.part("recovery").device)
        f.unlink()
        image.erofs = Path(layout.part("a").device)
    else:
        size = build_slot(image, layout.part("a").device)
        copy_blocks(layout.part("a").device, layout.part("recovery").device, size)
    run(["wipefs", "--all", "--quiet", layout.part("b").device], check=False)
    progress("formatting persistent", 75)
    with os_tree(image, tmp) as tree:
        format_persistent(layout, tree / "var")
    progress("writing OEM configuration", 82)
    staging = tmp / "oem"
    staging.mkdir(mode=0o755)
    oem.oem_tree(staging, config, reg_state)
    oem.save_system_state(staging, system.new_state(layout, image))
    run(["mkfs.ext4", "-q", "-F", "-L", disk.LABEL_OEM, "-d", str(staging), layout.part("oem").device])
    progress("installing the boot loader", 90)
    esp = tmp / "esp"
    esp.mkdir()
    boot.install_loader(esp, image.sd_boot)
    boot.slot_entry(esp, layout, image, "a", 1)
    boot.recovery_entry(esp, layout, image)
    run(["mkfs.vfat", "-F", "32", "-n", disk.LABEL_ESP, layout.part("esp").device])
    run(
        [
            "mcopy",
            "-s",
            "-Q",
            "-m",
            "-i",
            layout.part("esp").device,
            *[str(p) for p in sorted(esp.iterdir())],
            "::/",
        ]
    )
    run(["sync"], check=False)
