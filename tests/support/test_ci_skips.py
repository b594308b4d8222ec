"""The CI guard itself: a skip fails under CI=true and stays a skip elsewhere."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SKIPPING = """
import pytest

def test_needs_a_part():
    pytest.skip("qemu-system-x86_64 not installed")

@pytest.mark.xfail(reason="known")
def test_known_bug():
    assert False

def test_fine():
    pass
"""


@pytest.mark.parametrize(("ci", "outcomes"), [
    ("true", {"passed": 1, "failed": 1, "xfailed": 1}),
    ("", {"passed": 1, "skipped": 1, "xfailed": 1}),
])  # fmt: skip
def test_skip_is_a_failure_only_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcomes: dict[str, int]
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(SKIPPING)
    result = pytester.runpytest("-p", "tests.support.ci_skips")
    result.assert_outcomes(**outcomes)
    if ci:
        result.stdout.fnmatch_lines(["*skipped under CI=true*qemu-system-x86_64 not installed*"])
