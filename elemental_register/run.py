"""The one subprocess wrapper of the machine side.

Every external tool (sfdisk, mkfs.*, umoci, skopeo, bootctl, ...) goes through `run()`, so each
command is logged the same way and a failure always ends in one `Die` carrying what failed, the
tool's own stderr and a hint for the operator.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("elemental")

PathLike = str | os.PathLike[str]


class Die(Exception):
    """A fatal, user-facing error: `message` says what failed, `hint` what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


def die(message: str, hint: str = "") -> NoReturn:
    raise Die(message, hint)


def run(
    cmd: Sequence[PathLike],
    *,
    check: bool = True,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: PathLike | None = None,
    capture: bool = True,
    timeout: float | None = None,
    hint: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, log it, capture its output (text) and raise `Die` when it fails and `check`."""
    argv = [os.fspath(a) for a in cmd]
    log.debug("$ %s", shlex.join(argv))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    data = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(
            argv,
            input=data,
            env=full_env,
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        die(f"{argv[0]}: command not found", hint or f"install the package that provides {argv[0]}")
    except subprocess.TimeoutExpired:
        die(f"{shlex.join(argv)} timed out after {timeout}s", hint)
    if proc.returncode != 0 and check:
        detail = (proc.stderr or proc.stdout or "").strip()
        # the last lines of a tool's output are where it says what went wrong
        tail = "\n".join(detail.splitlines()[-15:])
        die(f"{shlex.join(argv)} failed (exit {proc.returncode})" + (f":\n{tail}" if tail else ""), hint)
    return proc


def which(name: str) -> str | None:
    for d in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":") + ["/usr/sbin", "/sbin"]:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def setup_logging(debug: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
