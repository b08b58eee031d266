"""`elemental upgrade`: write a new OS into the slot not running now and boot it next (A/B, counted)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elemental_common.errors import die
from elemental_register.installer import boot, disk, oem, source, system
from elemental_register.installer.image import SystemImage, build_slot, copy_blocks, erofs_size, prepare_image
from elemental_register.installer.progress import Progress, no_progress

log = logging.getLogger("elemental.installer")

# /tmp is RAM on the installed OS; the download and unpacked image (~800 MB) go to /var/tmp,
# which lives on COS_PERSISTENT, so an upgrade does not need that much free memory.
WORK_BASE = Path("/var/tmp")
WORK_PREFIX = "elemental-upgrade-"


def clean_interrupted(base: Path = WORK_BASE) -> list[Path]:
    """Remove the working directories of upgrades that were cut off (power loss, kill -9):
    every `elemental-upgrade-*` under `base` that no running upgrade holds locked. Without
    this an interrupted upgrade leaves ~520 MiB on persistent for good."""
    removed = []
    for d in sorted(base.glob(WORK_PREFIX + "*")):
        if d.is_symlink() or not d.is_dir():
            continue
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running upgrade's
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log.info("removed %s, left by an interrupted upgrade", d)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def _workdir(base: str | None) -> Iterator[Path]:
    """A fresh working directory, locked while we use it so that `clean_interrupted` spares it."""
    with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=base) as tmp:
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield Path(tmp)
        finally:
            os.close(fd)


def _same(record: dict[str, Any] | None, src: str, version: str | None = None) -> bool:
    """Whether a slot record says the slot holds `src` (at `version`, when given)."""
    if not record or record.get("source") != src:
        return False
    return version is None or record.get("version") == version


def upgrade(
    system_uri: str,
    progress: Progress | None = None,
    *,
    esp: Path | None = None,
    oem_dir: Path = Path("/oem"),
    booted: str | None = None,
    workdir: str | None = None,
    recovery: bool = False,
) -> str:
    """Write `system_uri` into the slot not running now and make it the one booted next with
    boot counting; the running slot stays as the fallback. Returns the slot that boots next.

    Idempotent: when the running slot already holds that OS (an upgrade instruction run again
    after its reboot, e.g. after a power cut before the agent recorded the plan as applied),
    nothing is written — writing it into the other slot would destroy the fallback."""
    progress = progress or no_progress
    st = oem.load_system_state(oem_dir)
    if not st:
        die(f"no system state in {oem_dir}", "upgrade runs on an installed system with COS_OEM at /oem")
    layout = system.layout_from_state(st)
    esp = esp or boot.find_esp()
    booted = booted or system.booted_slot()
    if booted not in ("a", "b"):
        die(
            f"upgrade must run from slot A or B (booted: {booted or 'unknown'})",
            "boot the installed system, not recovery or the seed",
        )
    target = "b" if booted == "a" else "a"
    src = source.check(source.parse(system_uri))
    running = (st.get("slots") or {}).get(booted)
    last = st.get("upgrade") or {}
    if not recovery and last.get("target") == booted and _same(running, str(src)):
        # the last upgrade wrote this very source into the slot we are running: done already
        progress(f"slot {booted.upper()} already runs {src}; nothing to write", 100)
        return booted
    if workdir is None and WORK_BASE.is_dir():
        workdir = str(WORK_BASE)
    if workdir is not None:
        clean_interrupted(Path(workdir))
    with _workdir(workdir) as tmp:
        progress("unpacking the OS image", 5)
        image = prepare_image(src, tmp)
        if _same(running, str(src), image.version):
            progress(f"slot {booted.upper()} already runs {image.version}; nothing to write", 100)
            if recovery:
                running_dev = disk.partition_device(layout.part(booted).uuid)
                if image.slot is None:  # a prebuilt slot's size (erofs + hash area) is known
                    image.size = erofs_size(running_dev)
                _write_recovery(esp, layout, st, image, running_dev)
                oem.save_system_state(oem_dir, st)
            return booted
        dev = disk.partition_device(layout.part(target).uuid)
        if image.size > disk.device_size(dev):
            die(
                f"the new OS ({image.size >> 20} MiB) does not fit slot {target.upper()} "
                f"({disk.device_size(dev) >> 20} MiB)",
                "use a smaller image or reinstall with larger slots",
            )
        # the slot's entry goes first: a cut-off upgrade must never leave a bootable half-written slot
        boot.remove_entries(esp, boot.slot_entry_id(target))
        progress(f"writing system slot {target.upper()}", 40)
        build_slot(image, dev)  # fsynced before the entry that points at it is written
        gen = int(st.get("generation", 1)) + 1
        progress("installing the boot entry", 85)
        boot.slot_entry(esp, layout, image, target, gen)
        if recovery:
            progress("writing recovery", 90)
            _write_recovery(esp, layout, st, image, dev)
        st["generation"] = gen
        st.setdefault("slots", {})[target] = system.slot_record(image, gen)
        st["upgrade"] = {
            "target": target,
            "from": booted,
            "source": image.source,
            "version": image.version,
            "generation": gen,
            "time": int(time.time()),
            "boot_id": system.boot_id(),
        }
        oem.save_system_state(oem_dir, st)
    # no global sync: the slot, the ESP files and the state were each written durably (a sync
    # would also wait for every other process's dirty pages)
    progress("upgraded", 100)
    return target


def _write_recovery(
    esp: Path, layout: disk.Layout, st: dict[str, Any], image: SystemImage, slot_dev: str
) -> None:
    """Copy the slot on `slot_dev` (holding `image`) into recovery, then its entry."""
    rdev = disk.partition_device(layout.part("recovery").uuid)
    if image.size > disk.device_size(rdev):
        die("the new OS does not fit the recovery partition")
    boot.remove_entries(esp, boot.RECOVERY_ID)
    copy_blocks(slot_dev, rdev, image.size)
    boot.recovery_entry(esp, layout, image)
    st["recovery"] = system.slot_record(image, 0)


def upgrade_outcome(st: dict[str, Any], booted: str | None, current_boot: str) -> tuple[str, str] | None:
    """("failed"|"succeeded"|"pending", message) for the last upgrade, None if there was none.
    Failed = we rebooted since the upgrade and are not running the slot it targeted."""
    up = st.get("upgrade")
    if not up:
        return None
    if up.get("boot_id") == current_boot:
        return "pending", f"upgrade to {up.get('version')} in slot {up['target'].upper()} waits for a reboot"
    if booted == up.get("target"):
        return "succeeded", f"running {up.get('version')} from slot {up['target'].upper()}"
    return "failed", (
        f"upgrade to {up.get('version')} ({up.get('source')}) in slot {up['target'].upper()} "
        f"failed to boot; rolled back to slot {str(booted).upper()}"
    )
