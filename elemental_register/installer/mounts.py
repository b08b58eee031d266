"""What is mounted where: /proc/self/mounts, read to decide where work may go (RAM or disk)."""

from __future__ import annotations

import os
from pathlib import Path

MOUNTS = Path("/proc/self/mounts")


def fstype(path: Path, mounts: Path = MOUNTS) -> str:
    """The file system type of the mount that holds `path` (the longest matching mount point)."""
    best, found = "", ""
    real = os.path.realpath(path)
    for line in mounts.read_text().splitlines():
        parts = line.split()
        mnt = parts[1]
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, found = mnt, parts[2]
    return found


def on_tmpfs(path: Path) -> bool:
    try:
        return fstype(path) == "tmpfs"
    except OSError:
        return False
