"""The machine-wide kernel cache: a finished entry is reused without building, a stale
build directory of a dead process is swept, a missing source is a clear error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from uniklab import buildcache
from uniklab.errors import BakeError
from uniklab.kernel import build as kbuild


@pytest.fixture
def fake_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kbuild, "plan", lambda profile, executor=None: (f"key-{profile}", []))


def _entry(root: Path, key: str) -> None:
    (root / key).mkdir(parents=True)
    (root / key / kbuild.BZIMAGE).write_bytes(b"kernel")
    (root / key / kbuild.CONFIG).write_text("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n")
    (root / key / kbuild.RELEASE).write_text("6.1.192-uniklab\n")


def test_cached_entry_is_returned_without_building(
    tmp_path: Path, fake_plan: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*_a: object, **_k: object) -> Path:
        raise AssertionError("must not build")

    monkeypatch.setattr(kbuild, "_build_in", no_build)
    assert kbuild.cached("microvm", root=tmp_path) is None
    _entry(tmp_path, "key-microvm")
    entry = kbuild.build("microvm", root=tmp_path)
    assert entry.bzimage.read_bytes() == b"kernel"
    assert entry.release == "6.1.192-uniklab"
    assert entry.has("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES")
    assert kbuild.cached("microvm", root=tmp_path) == entry


def test_build_renames_into_place_and_cleans_its_work_dir(
    tmp_path: Path, fake_plan: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_build(work: Path, *_a: object) -> tuple[Path, int]:
        out = work / "out"
        out.mkdir()
        (out / kbuild.BZIMAGE).write_bytes(b"new")
        (out / kbuild.RELEASE).write_text("r\n")
        return out, 0

    monkeypatch.setattr(kbuild, "_build_in", fake_build)
    entry = kbuild.build("xen", root=tmp_path)
    assert entry.bzimage.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_failed_build_leaves_no_entry(
    tmp_path: Path, fake_plan: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*_a: object) -> Path:
        raise BakeError("kernel config: fragment options dropped by Kconfig: CONFIG_X=y")

    monkeypatch.setattr(kbuild, "_build_in", failing)
    with pytest.raises(BakeError, match="CONFIG_X=y"):
        kbuild.build("microvm", root=tmp_path)
    assert kbuild.cached("microvm", root=tmp_path) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_sweep_removes_dead_builders_dirs_only(tmp_path: Path) -> None:
    dead = tmp_path / ".tmp-999999999-abcd"
    dead.mkdir()

    alive = tmp_path / f".tmp-{os.getpid()}-abcd"
    alive.mkdir()
    buildcache.sweep(tmp_path)
    assert not dead.exists() and alive.exists()


def test_missing_source_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(BakeError, match=r"apt-get install linux-source-6\.1"):
        kbuild.source_version(tarball=tmp_path / "nope.tar.xz")


def test_a_build_keeps_its_object_count_for_the_next_ones_estimate(
    tmp_path: Path, fake_plan: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected: list[int | None] = []

    def fake_build(work: Path, *args: object) -> tuple[Path, int]:
        expected.append(args[-1])  # type: ignore[arg-type]
        out = work / "out"
        out.mkdir()
        (out / kbuild.BZIMAGE).write_bytes(b"new")
        return out, 1234

    monkeypatch.setattr(kbuild, "_build_in", fake_build)
    first = kbuild.build("microvm", root=tmp_path)
    shutil.rmtree(first.dir)  # as a change of fragments or compiler would: a new key
    kbuild.build("microvm", root=tmp_path)
    kbuild.build("xen", root=tmp_path)  # another profile: its own count
    assert expected == [None, 1234, None]
