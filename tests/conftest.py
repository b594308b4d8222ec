"""Shared fixtures: every test gets its own UNIKLAB_HOME, so nothing touches the user's;
the stores with a baked Redis image that tests of several areas share; the real sshd
(``tests/support/sshd.py``).  Helpers to import live in ``tests/support/``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.homes import copy_home, make_baked_home
from tests.support.leaks import processes_mentioning, qemu_processes

if TYPE_CHECKING:
    from uniklab.lab import Lab

# Under CI=true a skip is a failure (tests/support/ci_skips.py); the sshd and libvirtd
# fixtures; the virtual Xen hosts' faults and the reruns' causes, said at the end
# (tests/support/lab_health.py, tests/support/reruns.py).
pytest_plugins = [
    "tests.support.ci_skips",
    "tests.support.sshd",
    "tests.support.libvirtd",
    "tests.support.lab_health",
    "tests.support.reruns",
]


@pytest.fixture
def signal_defaults() -> Iterator[None]:
    """SIGINT, SIGHUP and SIGTERM as a terminal gives them, whatever started the suite:
    `nohup` ignores SIGHUP, and a shell's background job ignores SIGINT, and an ignored
    signal stays ignored in every child (and in uniklab, which leaves it so)."""
    wanted = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGHUP: signal.SIG_DFL,
        signal.SIGTERM: signal.SIG_DFL,
    }
    saved = {s: signal.signal(s, h) for s, h in wanted.items()}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture(autouse=True)
def no_user_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test reads the user's configuration file or variables (uniklab.config): the
    config home is a directory that does not exist (a test wanting a file names its own)."""
    from uniklab import config

    empty = tmp_path_factory.getbasetemp() / "no-config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(empty))
    for var in (config.ENV_FILE, *(s.env for s in config.SETTINGS)):
        monkeypatch.delenv(var, raising=False)


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


# ---------------------------------------------------------------- guests: one baked image
# (uniklab.lab is imported when a fixture runs: it brings pyroute2, which most tests need not)


@pytest.fixture(scope="session")
def image_home() -> Iterator[Path]:
    """A store holding a baked Redis image, shared by the session's tests."""
    path = make_baked_home("ukl-img-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lab_home(image_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh UNIKLAB_HOME whose image store and image index come from image_home."""
    from uniklab.lab import Lab
    from uniklab.paths import Paths

    path = copy_home(image_home, "ukl-")
    monkeypatch.setenv("UNIKLAB_HOME", str(path))
    yield path
    # A failed test must not leak either: undo what the store still records (instances,
    # then networks: taps, dnsmasq, bridges, namespaces), then check what is left.
    with contextlib.suppress(Exception):
        cleanup = Lab(Paths(path))
        for row in cleanup.store.instances():
            with contextlib.suppress(Exception):
                cleanup.destroy(row.name)
        for net in cleanup.store.networks():
            with contextlib.suppress(Exception):
                cleanup.networks.rm(net.name, [])
        cleanup.close()
    leftover = qemu_processes(str(path))
    for line in leftover:
        os.kill(int(line.split()[0]), 9)
    shutil.rmtree(path, ignore_errors=True)
    assert not leftover, f"test left QEMU running: {leftover}"


@pytest.fixture
def lab(lab_home: Path) -> Iterator[Lab]:
    from uniklab.lab import Lab
    from uniklab.paths import Paths

    lab = Lab(Paths(lab_home))
    yield lab
    lab.close()


# ---------------------------------------------------------------- faults: a home to break


@pytest.fixture(scope="session")
def baked_home() -> Iterator[Path]:
    """A UNIKLAB_HOME holding a baked Redis image (baking takes a few seconds)."""
    path = make_baked_home("uklf-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fault_home(baked_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home with the baked image (copied), set as UNIKLAB_HOME."""
    path = copy_home(baked_home, "uklf-")
    monkeypatch.setenv("UNIKLAB_HOME", str(path))
    yield path
    for line in processes_mentioning(str(path)):
        os.kill(int(line.split()[0]), 9)
    shutil.rmtree(path, ignore_errors=True)
