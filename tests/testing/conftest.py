"""Fixtures for the testing face: a baked Redis image shared by the session, a fresh
UNIKLAB_HOME per test (short, under /tmp), and the fake backend for fast plugin tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.homes import copy_home
from tests.testing import fakes
from uniklab.errors import UniklabError
from uniklab.lab import Lab
from uniklab.paths import Paths
from uniklab.testing.session import backend_unavailable

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def baked_home() -> Iterator[Path]:
    """A store holding redis:latest, baked once for the session."""
    why = backend_unavailable()
    if why:
        pytest.skip(why)
    path = Path(tempfile.mkdtemp(prefix="ukt-img-", dir="/tmp"))
    lab = Lab(Paths(path))
    try:
        lab.bake("redis")
    except UniklabError as exc:
        pytest.skip(f"cannot bake redis here: {exc}")
    finally:
        lab.close()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(baked_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh UNIKLAB_HOME holding the baked image (and UNIKLAB_HOME set to it)."""
    path = copy_home(baked_home, "ukt-")
    monkeypatch.setenv("UNIKLAB_HOME", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_backend() -> Iterator[fakes.FakeBackend]:
    """Guests are host redis-server processes for the duration of the test."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    fakes.install()
    yield fakes.FAKE
    fakes.uninstall()
    fakes.FAKE.procs.clear()


def store_names(home: Path) -> list[str]:
    lab = Lab(Paths(home))
    try:
        return [r.name for r in lab.store.instances()]
    finally:
        lab.close()
