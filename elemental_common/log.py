"""Logging set-up and progress lines, the same for every command."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("elemental")


def setup_logging(debug: bool = False, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=fmt, stream=sys.stderr)


@contextlib.contextmanager
def step(what: str, logger: logging.Logger = log) -> Iterator[None]:
    """Log `‣ what …` before and `‣ what done in Ns` (or `failed after Ns`) after a block,
    like mkosi's complete_step(): one line per stage, with its time."""
    logger.info("‣ %s …", what)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        logger.info("‣ %s failed after %.1fs", what, time.monotonic() - start)
        raise
    logger.info("‣ %s done in %.1fs", what, time.monotonic() - start)
