"""`elemental bless`: mark the booted, counted boot entry good, durably (if systemd-bless-boot is absent)."""

from __future__ import annotations

import logging
from pathlib import Path

from elemental_register.installer import boot, durable, efivars

log = logging.getLogger("elemental.installer")

SYSTEMD_BLESS = Path("/usr/lib/systemd/systemd-bless-boot")


def bless(
    esp: Path | None = None,
    efivars_dir: Path = efivars.EFIVARS,
    systemd_bless: Path = SYSTEMD_BLESS,
) -> str | None:
    """Mark the booted, counted entry good (what systemd-bless-boot does after boot-complete.target).

    Used only when the OS lacks systemd-bless-boot (Debian ships it in the systemd-boot package);
    elemental-boot-check.service runs it once the agent is up. Returns the new entry name.

    The rename is fsynced with its directory: on the vfat ESP an unsynced rename was found as a
    0-byte entry after a power cut, and systemd-boot then offered only recovery, for good."""
    if systemd_bless.exists():
        return None  # systemd-bless-boot.service does it after boot-complete.target
    path = efivars.read_string("LoaderBootCountPath", efivars_dir)
    if not path:
        return None
    esp = esp or boot.find_esp()
    current = esp / path.replace("\\", "/").lstrip("/")
    entry = boot.parse_entry_name(current)
    if entry is None or entry.tries_left is None or not current.exists():
        return None
    good = current.with_name(f"{entry.id}.conf")
    durable.fsync_path(current)  # the entry's data first, then the name that makes it the good one
    durable.replace(current, good)
    log.info("blessed %s -> %s", current.name, good.name)
    return good.name
