"""The tier markers and the CI skip rule of tests/conftest.py, on a throw-away suite."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

SUITE = """
import pytest

@pytest.fixture
def swtpm():
    return object()

def test_plain():
    pass

def test_with_real_part(swtpm):
    pass

@pytest.mark.vm
def test_boots():
    pass

def test_skips():
    pytest.skip("swtpm is not installed")

@pytest.mark.allow_skip_in_ci("only with --run-e2e")
def test_skips_allowed():
    pytest.skip("only with --run-e2e")
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_tiers_select(suite: pytest.Pytester) -> None:
    suite.runpytest("-m", "unit", "-k", "not skips").assert_outcomes(passed=1, deselected=4)
    suite.runpytest("-m", "integration").assert_outcomes(passed=1, deselected=4)
    suite.runpytest("-m", "vm").assert_outcomes(passed=1, deselected=4)


def test_skip_is_a_failure_under_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-k", "skips")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*skipped under CI=true:*swtpm is not installed*"])


def test_skip_is_a_skip_outside_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    suite.runpytest("-k", "skips").assert_outcomes(skipped=2)
