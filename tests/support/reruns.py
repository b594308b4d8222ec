"""Why each rerun test was run again, said at the end of the run beside the virtual Xen
hosts' report: pyproject's ``only_rerun`` lets one known upstream panic through once, and
a rerun that passes must still be seen (pytest itself says only "1 rerun")."""

from __future__ import annotations

import pytest

from tests.support import run_end

SEEN: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # "rerun" is pytest-rerunfailures' own outcome, not in pytest's Literal
    if report.outcome == "rerun":  # type: ignore[comparison-overlap]
        why = report.longrepr.reprcrash.message if hasattr(report.longrepr, "reprcrash") else ""
        SEEN.append(f"{report.nodeid}: {why.splitlines()[0] if why else 'failed'}"[:400])


def pytest_unconfigure(config: pytest.Config) -> None:
    run_end.say(config, "tests run again after a known upstream failure", SEEN)
