"""A pytest plugin: under CI=true a skipped test fails.

A test that skips because a real part is missing (QEMU, a kernel, root, dnsmasq, sshd, the
Xen packages, the specialised kernel…) hides exactly the defect CI is for: the suite looks
green on a machine where it tested nothing.  On users' machines skips stay skips.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (a real part is missing?): {reason}"
    return report
