"""Progress of a long operation: a (stage, percent) callback, logged when nobody listens."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("elemental.installer")

Progress = Callable[[str, int], None]


def no_progress(stage: str, percent: int) -> None:
    log.info("[%3d%%] %s", percent, stage)
