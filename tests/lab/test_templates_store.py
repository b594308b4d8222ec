"""The template store without guests: checks, locks, lookups (uniklab.templates)."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from uniklab import templates
from uniklab.errors import ConflictError, NotFoundError, UsageError
from uniklab.paths import Paths

KEY = "c0ffee" + "0" * 58


def _template(base: Path, key: str = KEY, big: bool = False) -> Path:
    path = base / key
    path.mkdir(parents=True)
    (path / "state").write_bytes(b"device state")
    if big:  # past HASHED_MAX: checked by size and mtime
        with (path / "memory").open("wb") as f:
            f.truncate(templates.HASHED_MAX + 1)
    files = {p.name: templates._fingerprint(p) for p in path.iterdir()}
    meta = {"format": templates.FORMAT, "key": key, "digest": "sha256:1", "files": files}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_a_whole_template_passes_its_check(tmp_path: Path) -> None:
    path = _template(tmp_path, big=True)
    assert templates.check(path, KEY).digest == "sha256:1"


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "state").write_bytes(b"device statf"),  # same size, other bytes
        lambda p: (p / "state").unlink(),
        lambda p: (p / "memory").unlink(),
        lambda p: (p / "memory").open("ab").write(b"x"),
        lambda p: (p / "meta.json").write_text("{"),
        lambda p: (p / "meta.json").unlink(),
    ],
)
def test_a_damaged_template_fails_its_check(tmp_path: Path, damage: object) -> None:
    path = _template(tmp_path, big=True)
    assert callable(damage)
    damage(path)
    with pytest.raises(NotFoundError):
        templates.check(path, KEY)


def test_a_template_is_checked_against_its_own_key(tmp_path: Path) -> None:
    path = _template(tmp_path)
    with pytest.raises(NotFoundError, match="not this template's"):
        templates.check(path, "d" * 64)


def test_a_held_lock_makes_a_bounded_wait_then_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    with (
        templates._locked(lock, fcntl.LOCK_EX, timeout=1.0),
        pytest.raises(ConflictError, match="busy"),
        templates._locked(lock, fcntl.LOCK_SH, timeout=0.2),
    ):
        pass
    # free again; readers share
    with (
        templates._locked(lock, fcntl.LOCK_SH, timeout=0.2),
        templates._locked(lock, fcntl.LOCK_SH, timeout=0.2),
    ):
        pass


def test_find_by_prefix(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    _template(templates.root(paths))
    assert templates.find(paths, "c0ff").key == KEY
    with pytest.raises(UsageError, match="invalid template key"):
        templates.find(paths, "c0")
    with pytest.raises(UsageError, match="invalid template key"):
        templates.find(paths, "C0FFEE")
    with pytest.raises(NotFoundError, match="no template beef"):
        templates.find(paths, "beef")
    templates.remove(paths, KEY)
    assert templates.ls(paths) == []


def test_only_a_backend_that_restores_clones_makes_templates() -> None:
    from uniklab.backends.base import Backend, Handle, InstanceSpec
    from uniklab.backends.qemu import QemuBackend

    class Plain(Backend):
        name = "plain"

    assert templates.can(QemuBackend(accel="tcg"))
    assert not templates.can(Plain())
    with pytest.raises(UsageError, match=r"^the plain backend cannot make templates$"):
        Plain().restore_clone(InstanceSpec("x", Path("k"), None, "", 1, 1, Path("r")), Path())
    with pytest.raises(UsageError, match=r"^the plain backend cannot make templates$"):
        Plain().save_template(Handle(pid=None), Path())
