"""The one subprocess wrapper: every external tool (sfdisk, mkfs.*, umoci, skopeo, bootctl,
xorriso, ...) goes through `run()` or `spawn()`, so each command is logged the same way and a
failure always ends in one `Die` that says what failed — exit code, killing signal, missing
command or time-out — with the tool's own last lines of output and a hint.

Modes of `run()`:
- capture (default): stdout and stderr are captured as text and returned;
- `stream=True`: the tool writes to our stdout/stderr as it runs (long steps a user watches),
  and a failure says so without a captured tail;
- `binary=True`: stdout as bytes (tools whose output is data).
`spawn()` starts a long-running process (a pipeline stage, a daemon) with the same logging and
the same missing-command message; `check_exit()` turns its end into the same failure text.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from elemental_common.errors import Die, die

log = logging.getLogger("elemental")

PathLike = str | os.PathLike[str]
TAIL_LINES = 15  # the last lines of a tool's output are where it says what went wrong


def describe_exit(returncode: int) -> str:
    """`exit 3` or `killed by SIGKILL` (subprocess reports a signal as a negative code)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if env is None else {**os.environ, **env}


def _tail(*outputs: str | bytes | None) -> str:
    for out in outputs:
        if out:
            text = out.decode(errors="replace") if isinstance(out, bytes) else out
            return "\n".join(text.strip().splitlines()[-TAIL_LINES:])
    return ""


def check_exit(
    argv: Sequence[str], returncode: int, output: str | bytes | None = None, hint: str = ""
) -> None:
    """Raise the wrapper's `Die` for a process that ended with `returncode` != 0."""
    if returncode != 0:
        tail = _tail(output)
        die(f"{shlex.join(argv)} failed ({describe_exit(returncode)})" + (f":\n{tail}" if tail else ""), hint)


def run(
    cmd: Sequence[PathLike],
    *,
    check: bool = True,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: PathLike | None = None,
    capture: bool = True,
    stream: bool = False,
    binary: bool = False,
    timeout: float | None = None,
    hint: str = "",
) -> subprocess.CompletedProcess[Any]:
    """Run `cmd`, log it, and raise `Die` when it fails and `check` (see the module's modes)."""
    argv = [os.fspath(a) for a in cmd]
    log.debug("$ %s", shlex.join(argv))
    capture = capture and not stream
    data: bytes | str | None = input
    if binary and isinstance(data, str):
        data = data.encode()
    elif not binary and isinstance(data, bytes):
        data = data.decode()
    try:
        proc = subprocess.run(
            argv,
            input=data,
            env=_env(env),
            cwd=cwd,
            text=not binary,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        die(f"{argv[0]}: command not found", hint or f"install the package that provides {argv[0]}")
    except PermissionError:
        die(f"{argv[0]}: permission denied (not executable?)", hint)
    except subprocess.TimeoutExpired:
        die(f"{shlex.join(argv)} timed out after {timeout}s", hint)
    if check:
        check_exit(argv, proc.returncode, proc.stderr or proc.stdout, hint)
    return proc


def spawn(
    cmd: Sequence[PathLike],
    *,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: PathLike | None = None,
    hint: str = "",
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start `cmd` in the background (bytes I/O), logged like `run()`."""
    argv = [os.fspath(a) for a in cmd]
    log.debug("$ %s &", shlex.join(argv))
    try:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, env=_env(env), cwd=cwd, **kwargs
        )
    except FileNotFoundError:
        die(f"{argv[0]}: command not found", hint or f"install the package that provides {argv[0]}")


def which(name: str) -> str | None:
    for d in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":") + ["/usr/sbin", "/sbin"]:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


__all__ = ["Die", "check_exit", "describe_exit", "die", "run", "spawn", "which"]
