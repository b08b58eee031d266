"""Fixtures for registration tests: one real swtpm per simulated machine.

Use with ``from helpers_registration import swtpm, swtpm_factory  # noqa: F401``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest

from elemental_register.tpm import Swtpm


def _require_swtpm() -> None:
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed")


@pytest.fixture
def swtpm_factory() -> Iterator[Callable[[], Swtpm]]:
    """Start as many swtpm processes (machines) as a test needs; all are stopped afterwards."""
    _require_swtpm()
    started: list[Swtpm] = []

    def start() -> Swtpm:
        sw = Swtpm().start()
        started.append(sw)
        return sw

    try:
        yield start
    finally:
        for sw in started:
            sw.stop()


@pytest.fixture
def swtpm(swtpm_factory: Callable[[], Swtpm]) -> Swtpm:
    return swtpm_factory()
