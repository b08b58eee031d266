"""`elemental build-disk`: a bootable raw disk image of the installed layout, made through a loop device."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elemental_common.run import run
from elemental_register.installer import source
from elemental_register.installer.install import install
from elemental_register.installer.progress import Progress


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[str]:
    dev = run(
        ["losetup", "--find", "--show", "--partscan", str(image)],
        hint="build-disk needs root and loop devices",
    ).stdout.strip()
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


def build_disk(
    system: str,
    output: Path,
    size: int,
    config: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> None:
    """A bootable raw disk image of the installed layout (no registration unless config has one)."""
    src = source.check(source.parse(system))  # fail before creating the output
    tmp_out = output.with_name(output.name + ".part")
    tmp_out.unlink(missing_ok=True)
    with open(tmp_out, "wb") as f:
        f.truncate(size)
    try:
        with loop_device(tmp_out) as dev:
            cfg = dict(config or {})
            el = dict(cfg.get("elemental") or {})
            el["install"] = {
                **(el.get("install") or {}),
                "device": dev,
                "system-uri": str(src),
                "reboot": False,
                "poweroff": False,
            }
            cfg["elemental"] = el
            install(cfg, progress)
        os.replace(tmp_out, output)
    finally:
        tmp_out.unlink(missing_ok=True)
