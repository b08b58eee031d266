"""Rate limit for repeated log lines: a burst per message template and interval, then one
summary line with the number suppressed, so no client behaviour can fill the disk with logs.

Issue 11: asyncio's "socket.accept() out of system resource" grew the log by 122 MB in 20 s.
The key is the message *template* (``record.msg``) and its logger: a peer varies the arguments
(addresses, ids) but not the template, and templates are a fixed, small set.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    count: int = 0
    suppressed: int = 0


class RateLimitFilter(logging.Filter):
    def __init__(self, burst: int = 20, interval: float = 60.0, clock: object = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = float(self.clock())  # type: ignore[operator]
        with self._lock:
            win = self._windows.get(key)
            if win is None or now - win.start >= self.interval:
                suppressed = win.suppressed if win is not None else 0
                if len(self._windows) > 10_000:
                    self._windows.clear()  # bounded memory even with unexpected templates
                self._windows[key] = _Window(start=now, count=1)
                if suppressed:
                    record.msg = f"{record.msg} [{suppressed} similar messages suppressed]"
                return True
            win.count += 1
            if win.count <= self.burst:
                return True
            if win.count == self.burst + 1:
                # Say once that the rest of this window is being dropped.
                record.msg = f"{record.msg} [repeated: more like this suppressed for {self.interval:g}s]"
                return True
            win.suppressed += 1
            self.suppressed_total += 1
            return False


def install(burst: int = 20, interval: float = 60.0) -> RateLimitFilter:
    """Attach one filter to every handler of the root logger (records from all loggers)."""
    filt = RateLimitFilter(burst, interval)
    for handler in logging.getLogger().handlers:
        handler.addFilter(filt)
    return filt
