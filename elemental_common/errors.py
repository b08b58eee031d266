"""The one user-facing error type and the one handler every entry point uses.

A user error says what failed (`message`) and what to do about it (`hint`); it is printed as
one or two lines and exits 1, never as a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

log = logging.getLogger("elemental")


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


F = TypeVar("F", bound=Callable[..., int])


def entry_point(prog: str) -> Callable[[F], F]:
    """Decorate a `main(argv) -> int`: a `Die` becomes `prog: error: …` on stderr and exit 1,
    Ctrl-C exit 130. The one place where user errors meet the terminal."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def main(*args: object, **kwargs: object) -> int:
            try:
                return fn(*args, **kwargs)
            except Die as e:
                report(prog, e)
                return 1
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130

        return main  # type: ignore[return-value]

    return wrap


def report(prog: str, e: Die) -> None:
    """Print a user error as `prog: error: message` (+ `  hint: …`), also into the log."""
    print(f"{prog}: error: {e.message}", file=sys.stderr)
    if e.hint:
        print(f"  hint: {e.hint}", file=sys.stderr)
    log.debug("user error in %s: %s", prog, e)
