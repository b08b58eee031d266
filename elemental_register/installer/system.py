"""The installed system: its state record in COS_OEM (partitions, slots, last upgrade), booted slot, power."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from elemental_common import cmdline
from elemental_common.errors import die
from elemental_common.run import run
from elemental_register.installer import disk
from elemental_register.installer.image import SystemImage

STATE_VERSION = 1
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def slot_record(image: SystemImage, generation: int) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "source": image.source,
        "version": image.version,
        "size": image.size,
        "generation": generation,
        "time": int(time.time()),
    }
    if image.verity is not None:
        # reset writes slot A's entry from this: the slot's root hash and the UKI's command line
        rec.update(
            roothash=image.verity.roothash, hash_offset=image.verity.hash_offset, cmdline=image.uki.cmdline
        )
    return rec


def new_state(layout: disk.Layout, image: SystemImage) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "partitions": {p.role: p.uuid for p in layout.parts},
        "generation": 1,
        "slots": {"a": slot_record(image, 1), "b": None},
        "recovery": slot_record(image, 0),
        "upgrade": None,
    }


def layout_from_state(st: dict[str, Any]) -> disk.Layout:
    parts = st.get("partitions") or {}
    labels = {
        "esp": disk.LABEL_ESP,
        "oem": disk.LABEL_OEM,
        "recovery": disk.LABEL_RECOVERY,
        "a": disk.LABEL_SLOT["a"],
        "b": disk.LABEL_SLOT["b"],
        "persistent": disk.LABEL_PERSISTENT,
    }
    if set(parts) != set(labels):
        die(
            "the system state in COS_OEM does not describe the partitions",
            "this system was not installed by this installer, or COS_OEM was wiped; reinstall from the seed",
        )
    return disk.Layout([disk.Part(r, labels[r], 0, uuid=parts[r]) for r in labels])


def booted_slot() -> str | None:
    """`a`, `b` or `recovery` from the booted entry's command line (None outside the installed OS)."""
    return cmdline.kernel_cmdline().get("elemental.slot")


def boot_mode() -> str | None:
    return cmdline.kernel_cmdline().get("elemental.mode")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def power(section: dict[str, Any], *, default_reboot: bool = False) -> None:
    """Power off or reboot as a config section (install, reset) says."""
    if section.get("poweroff"):
        run(["systemctl", "poweroff"], check=False)
    elif section.get("reboot", default_reboot):
        run(["systemctl", "reboot"], check=False)
