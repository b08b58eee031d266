"""Durable file writes: data, fsync, rename, fsync of the directory — in that order.

A rename is only on disk once its directory is; without the directory's fsync a power cut after
the rename can leave the old name, the new name, or (vfat ESP, measured) a 0-byte file. Whatever
points at data (a boot entry at a slot, a state file at an applied plan) is written only after
the data is durable.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path | str) -> None:
    """fsync a file, a directory or a block device by name."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src: Path, dst: Path) -> None:
    """`os.replace(src, dst)` made durable: the renamed file and its directory are fsynced."""
    os.replace(src, dst)
    fsync_path(dst)
    fsync_path(dst.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a power cut leaves either the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    replace(tmp, path)
