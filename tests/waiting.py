"""Bounded waits for tests: poll a condition until it holds or a deadline passes (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    cond: Callable[[], T], timeout: float, *, interval: float = 0.05, what: str = "the condition"
) -> T:
    """Call ``cond()`` until it returns something truthy and return that; AssertionError naming
    ``what`` (and the last value seen) once ``timeout`` seconds have passed.

    ``cond`` is always called once more at the deadline, so a slow poll cannot miss a condition
    that became true while it slept; an exception from ``cond`` ends the wait at once (a process
    that died is not worth waiting for).
    """
    deadline = time.monotonic() + timeout
    while True:
        last = cond()
        if last:
            return last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(min(interval, remaining))
