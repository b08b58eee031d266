"""The kernel command line as a mapping (the one parser; `key` alone maps to "")."""

from __future__ import annotations

import shlex
from pathlib import Path


def parse(text: str) -> dict[str, str]:
    """`a=1 b "c=x y"` -> {"a": "1", "b": "", "c": "x y"}; a later key wins, as in the kernel."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote: the kernel splits on spaces then
        words = text.split()
    out: dict[str, str] = {}
    for w in words:
        k, _, v = w.partition("=")
        out[k] = v
    return out


def kernel_cmdline(path: Path = Path("/proc/cmdline")) -> dict[str, str]:
    try:
        return parse(path.read_text())
    except OSError:
        return {}
