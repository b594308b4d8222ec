"""End-to-end fixtures: one baked Redis image per module, a clean store per test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import copy_home, make_baked_home
from uniklab.lab import Lab
from uniklab.paths import Paths


def qemu_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", "qemu-system"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if marker in ln]


def assert_nothing_left(home: Path) -> None:
    """No QEMU, no runtime directory, no instance row under this UNIKLAB_HOME."""
    assert qemu_processes(str(home)) == []
    run = home / "run"
    assert not run.exists() or list(run.iterdir()) == []
    lab = Lab(Paths(home))
    try:
        assert lab.store.instances() == []
    finally:
        lab.close()


@pytest.fixture(scope="session")
def image_home() -> Iterator[Path]:
    """A store holding a baked Redis image, shared by the session's tests."""
    path = make_baked_home("ukl-img-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lab_home(image_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh UNIKLAB_HOME whose image store and image index come from image_home."""
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
    lab = Lab(Paths(lab_home))
    yield lab
    lab.close()


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    from uniklab.cli.main import main

    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)
