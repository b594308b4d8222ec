"""Unit tests for building the guest init (uniklab.guest.build)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from uniklab.errors import BakeError
from uniklab.guest import build
from uniklab.guest.build import build_init

pytestmark = pytest.mark.skipif(
    not (shutil.which("musl-gcc") or shutil.which("gcc")), reason="needs a C compiler"
)


def test_builds_a_small_static_elf(tmp_path: Path) -> None:
    out = build_init(tmp_path)
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert out.stat().st_mode & 0o111
    # Static: no program interpreter (PT_INTERP would name ld.so).
    assert b"/ld-linux" not in data and b"ld-musl" not in data
    if shutil.which("musl-gcc"):
        assert len(data) < 100_000


def test_cached_on_second_call(tmp_path: Path) -> None:
    first = build_init(tmp_path)
    mtime = first.stat().st_mtime_ns
    second = build_init(tmp_path)
    assert second == first
    assert second.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp files left


def test_no_compiler_is_a_bake_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(BakeError, match="no C compiler"):
        build_init(tmp_path)


def test_compile_failure_is_a_bake_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "init.c").write_text("int main(void) { return syntax error; }\n")
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    cache = tmp_path / "cache"
    with pytest.raises(BakeError, match="compiling the guest init failed"):
        build_init(cache)
    assert not any(cache.iterdir())  # the temp file was removed
