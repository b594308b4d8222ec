"""Shared fixtures: every test gets its own UNIKLAB_HOME, so nothing touches the user's."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Under CI=true a skip is a failure (tests/ci_skips.py).
pytest_plugins = ["tests.ci_skips"]


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


def make_baked_home(prefix: str, recipe: str = "redis") -> Path:
    """A new home under /tmp (short path: sockets live under it) with ``recipe`` baked."""
    from uniklab.lab import Lab
    from uniklab.paths import Paths

    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    lab = Lab(Paths(path))
    try:
        lab.bake(recipe)
    finally:
        lab.close()
    return path


def copy_home(source: Path, prefix: str) -> Path:
    """A fresh home holding ``source``'s images, caches and image index (no instances)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    for sub in ("images", "cache"):
        shutil.copytree(source / sub, path / sub, symlinks=True)
    shutil.copy(source / "state.db", path / "state.db")
    return path
