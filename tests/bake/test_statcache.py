"""Facts about host files (ELF headers, digests) remembered while the file is unchanged."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from uniklab import statcache
from uniklab.bake import elf
from uniklab.digest import sha256_file, sha256_known


@pytest.fixture(autouse=True)
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("UNIKLAB_FACTS_CACHE", str(tmp_path / "facts"))
    monkeypatch.setattr(statcache, "_entries", None)
    monkeypatch.setattr(statcache, "_dirty", False)
    yield tmp_path / "facts"


def _forget() -> None:
    """What a new process sees: only the file on disk."""
    statcache._entries = None


def test_elf_facts_survive_a_new_process_and_match_a_fresh_read(tmp_path: Path) -> None:
    binary = tmp_path / "true"
    shutil.copy2("/bin/true", binary)
    first = elf.elf_info(binary)
    statcache.save()
    _forget()
    assert statcache.get(binary, "elf") is not None
    assert elf.elf_info(binary) == first == elf._read_info(binary)
    assert first.needed and first.interp


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(b"one")
    assert sha256_known(f) == sha256_file(f)
    f.write_bytes(b"two!")
    assert sha256_known(f) == sha256_file(f)
    st = f.stat()
    f.write_bytes(b"six!")  # same size: the mtime tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert sha256_known(f) == sha256_file(f)


def test_a_corrupt_or_unwritable_memo_only_costs_speed(tmp_path: Path, fresh: Path) -> None:
    fresh.mkdir()
    (fresh / f"files-v{statcache.VERSION}.json").write_text("{not json")
    f = tmp_path / "data"
    f.write_bytes(b"x")
    assert sha256_known(f) == sha256_file(f)
    statcache.save()
    _forget()
    assert statcache.get(f, "sha256") == sha256_file(f)
    fresh.chmod(0o500)
    try:
        statcache.put(f, "sha256", "other")
        statcache.save()  # no error
    finally:
        fresh.chmod(0o700)
