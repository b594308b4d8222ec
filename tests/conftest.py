"""Shared fixtures: every test gets its own UNIKLAB_HOME, so nothing touches the user's."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # A short path: QEMU's unix sockets live under it and sun_path holds 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="ukl-", dir="/tmp"))
    monkeypatch.setenv("UNIKLAB_HOME", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
