"""Test tiers and the CI skip rule, for the whole suite (docs/testing.md).

Every test gets exactly one tier marker, so `pytest -m unit` and the Makefile's targets select by it:

* ``unit``: no root, no VM, no built images, no real external part; `make unit`, minutes at most;
* ``integration``: real parts on this host — swtpm, SQLite and PostgreSQL stores, an operator
  process, root with loop devices, the built images unpacked (but no VM);
* ``vm``: boots QEMU guests (declared by the module: ``pytestmark = pytest.mark.vm``);
* ``e2e``: the end-to-end suite in tests/e2e (also ``vm``).

A test is ``integration`` when it uses one of INTEGRATION_FIXTURES, carries the ``postgres`` marker,
lives in one of INTEGRATION_MODULES, or declares ``pytest.mark.integration`` itself; otherwise unit.

Under ``CI=true`` a skipped test fails the run, unless it is marked
``@pytest.mark.allow_skip_in_ci("why it may skip there")``: a CI machine that quietly lacks root,
swtpm or an image must not pass by running nothing.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

# Fixtures that stand up a real external part.
INTEGRATION_FIXTURES = frozenset(
    {
        "swtpm",  # tests/helpers_registration.py: a real swtpm process
        "swtpm_factory",
        "store",  # tests/operator_fixtures.py: a real SQLite or PostgreSQL store
        "store_url",
        "postgres_server",
        "operator",  # an operator serving HTTPS on loopback
    }
)
# Modules whose every test needs root, loop devices or built images (and no VM).
INTEGRATION_MODULES = frozenset(
    {
        "test_installer.py",
        "test_installer_lifecycle.py",
        "test_operator_container.py",
    }
)
TIERS = ("unit", "integration", "vm", "e2e")


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in (
        ("unit", "no root, no VM, no images, no external process (make unit)"),
        ("integration", "real swtpm / SQLite / PostgreSQL / operator process / root + loop devices"),
        ("vm", "boots QEMU guests (slow; needs built images)"),
        ("e2e", "end-to-end lifecycle test in QEMU (the variant in make test)"),
        ("allow_skip_in_ci(reason)", "this test may skip under CI=true, for the reason given"),
    ):
        config.addinivalue_line("markers", f"{name}: {doc}")


def tier(item: pytest.Item) -> str:
    if "e2e" in item.keywords or "e2e_full" in item.keywords:
        return "e2e"
    if "vm" in item.keywords:
        return "vm"
    if (
        "integration" in item.keywords
        or "postgres" in item.keywords
        or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
        or Path(str(item.fspath)).name in INTEGRATION_MODULES
    ):
        return "integration"
    return "unit"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        t = tier(item)
        if t == "e2e":
            item.add_marker(pytest.mark.vm)
        item.add_marker(getattr(pytest.mark, t))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not (report.skipped and _in_ci()) or hasattr(report, "wasxfail"):
        return
    if item.get_closest_marker("allow_skip_in_ci") is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true: {reason}\n"
        "A CI run must not skip (a missing package, root or image would pass by running nothing); "
        "fix the cause, or mark the test @pytest.mark.allow_skip_in_ci(reason)."
    )
