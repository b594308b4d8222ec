from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from uniklab.errors import ConflictError, NotFoundError
from uniklab.state.store import CREATING, RUNNING, Store


def _reserve(store: Store, name: str) -> int:
    row = store.reserve(
        name=name,
        image="redis:latest",
        digest="sha256:x",
        backend="qemu",
        host="local",
        memory_mb=64,
        vcpus=1,
        owner_pid=1,
        spec={},
        labels={},
    )
    return row.id


def test_reserve_update_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    rid = _reserve(store, "r1")
    assert store.instance("r1").state == CREATING
    store.update(rid, state=RUNNING, pid=42, runtime={"rundir": "/x"})
    row = store.instance(str(rid))
    assert (row.state, row.pid, row.runtime) == (RUNNING, 42, {"rundir": "/x"})
    with pytest.raises(ConflictError):
        _reserve(store, "r1")
    store.delete_instance(rid)
    with pytest.raises(NotFoundError):
        store.instance("r1")


def test_state_file_is_private(tmp_path: Path) -> None:
    Store(tmp_path / "state.db")
    assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0


def test_images(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.put_image("redis", "latest", "sha256:a")
    store.put_image("redis", "latest", "sha256:b")
    assert [(i.name, i.digest) for i in store.images()] == [("redis", "sha256:b")]
    assert store.digest_in_use("sha256:b") and not store.digest_in_use("sha256:a")


def _racer(args: tuple[str, int]) -> int:
    db, _i = args
    store = Store(Path(db))
    won = 0
    for n in range(20):
        try:
            _reserve(store, f"n{n}")
            won += 1
        except ConflictError:
            pass
    return won


def test_parallel_processes_never_double_reserve(tmp_path: Path) -> None:
    """Eight processes race to reserve the same 20 names: each name is won exactly once."""
    db = str(tmp_path / "state.db")
    Store(Path(db)).close()
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        wins = pool.map(_racer, [(db, i) for i in range(8)])
    assert sum(wins) == 20
    assert sorted(r.name for r in Store(Path(db)).instances()) == sorted(f"n{n}" for n in range(20))
