"""Lines said after pytest's own summary, so that the last lines of a run's log carry
them (CI shows a run's first and last lines)."""

from __future__ import annotations

import pytest


def say(config: pytest.Config, title: str, lines: list[str]) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if not lines or tr is None:
        return
    tr.write_sep("=", title)
    for line in lines:
        tr.write_line(line)
