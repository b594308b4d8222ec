"""The state store's schema versions: a home made by uniklab 0.2 opens with every row, a
future column is one migration step run once (even by racing processes), and a store
from a newer uniklab is refused in one line."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from uniklab.backends.base import spec_from_json
from uniklab.cli.main import main
from uniklab.errors import StoreError
from uniklab.state import migrations
from uniklab.state.store import Store

DUMP = Path(__file__).parent.parent / "fixtures" / "store-0.2" / "state.sql"
LATEST = len(migrations.MIGRATIONS)


def store_0_2(path: Path) -> Path:
    """A state.db as uniklab 0.2 left it (the dump make_dump.py took with 0.2's code)."""
    db = sqlite3.connect(path)
    db.executescript(DUMP.read_text())
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    return path


def test_a_0_2_store_opens_with_every_row(tmp_path: Path) -> None:
    store = Store(store_0_2(tmp_path / "state.db"))
    assert store.version == LATEST
    assert [(i.name, i.tag, i.digest[:9]) for i in store.images()] == [
        ("nginx", "latest", "sha256:2e"),
        ("redis", "latest", "sha256:1f"),
        ("redis", "specialised", "sha256:3d"),
    ]
    assert [(r.id, r.name, r.state, r.backend, r.host) for r in store.instances()] == [
        (1, "redis-a1b2c3", "running", "qemu", "local"),
        (2, "web", "exited", "qemu", "local"),
        (3, "xen-redis", "running", "xen", "xenlab"),
    ]
    redis = store.instance("redis-a1b2c3")
    assert redis.spec["publish"] == [[40123, 6379]]
    # Version 2: the NICs of 0.2's runtime keys (nics, xen_nics, mac, forwards) became
    # one typed list, and the restart policy's launch spec says the same.
    [user] = redis.attachments
    assert (user.kind, user.mac, user.forwards) == ("user", "52:54:00:12:34:56", ((40123, 6379),))
    assert not {"forwards", "mac", "nics", "xen_nics"} & set(redis.runtime)
    assert spec_from_json(redis.runtime["launch"]).nics == (user,)
    assert redis.labels == {"uniklab.session": "s-1"}
    web = store.instance("web")
    [tap] = web.attachments
    assert (tap.kind, tap.net, tap.tap, tap.addr) == (
        "bridge", "lab0", "ukt5d41402a-2", "10.77.0.20/24"
    )  # fmt: skip
    launched = spec_from_json(web.runtime["launch"]).nics
    assert [(a.kind, a.tap) for a in launched] == [("bridge", "ukt5d41402a-2")]
    assert (web.exit_reason, web.runtime["restarts"]) == ("app exited status 0", 1)
    [vif] = store.instance("xen-redis").attachments
    assert (vif.kind, vif.bridge, vif.mac) == ("host-bridge", "xenbr0", "00:16:3e:00:00:03")
    net = store.network("lab0")
    assert (net.subnet, net.dhcp, net.made_bridge, net.dnsmasq_pid) == (
        "10.77.0.0/24",
        True,
        True,
        4321,
    )
    assert [name for name, _ in store.hosts()] == ["xenlab"]
    assert '"bmc":"192.0.2.11"' in store.host_doc("xenlab")
    # Still a working store: ids go on from 0.2's, names stay unique.
    row = store.reserve(
        name="after-upgrade", image="redis:latest", digest="sha256:x", backend="qemu",
        host="local", memory_mb=64, vcpus=1, owner_pid=1, spec={}, labels={},
    )  # fmt: skip
    assert row.id == 4
    store.close()


def _add_note(db: sqlite3.Connection) -> None:
    # Not idempotent on purpose: run twice, ALTER TABLE fails ("duplicate column name").
    db.execute("ALTER TABLE instances ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE TABLE IF NOT EXISTS ran (pid INTEGER)")
    db.execute("INSERT INTO ran VALUES (?)", (os.getpid(),))


def test_a_future_column_is_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = store_0_2(tmp_path / "state.db")
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, _add_note))
    store = Store(path)
    assert store.version == LATEST + 1
    store.close()
    Store(path).close()  # opened again: nothing left to run
    db = sqlite3.connect(path)
    assert db.execute("SELECT name, note FROM instances ORDER BY id").fetchall() == [
        ("redis-a1b2c3", ""),
        ("web", ""),
        ("xen-redis", ""),
    ]
    assert len(db.execute("SELECT * FROM ran").fetchall()) == 1
    db.close()


def _slow_note(db: sqlite3.Connection) -> None:
    _add_note(db)
    time.sleep(0.3)  # hold the write lock while the others try


def _open_upgraded(path: str, barrier: Barrier, errors: multiprocessing.Queue[str]) -> None:
    migrations.MIGRATIONS = (*migrations.MIGRATIONS, _slow_note)
    barrier.wait()
    try:
        Store(Path(path)).close()
    except Exception as exc:
        errors.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_an_old_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = store_0_2(tmp_path / "state.db")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    errors: multiprocessing.Queue[str] = ctx.Queue()
    procs = [
        ctx.Process(target=_open_upgraded, args=(str(path), barrier, errors)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)  # four fresh interpreters on a loaded 2-core machine
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1
    assert len(db.execute("SELECT * FROM ran").fetchall()) == 1
    db.close()


def _newer(path: Path) -> Path:
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LATEST + 1}")
    db.close()
    return path


def test_a_store_from_a_newer_uniklab_is_refused(tmp_path: Path) -> None:
    path = _newer(tmp_path / "state.db")
    with pytest.raises(StoreError, match="upgrade uniklab") as info:
        Store(path)
    assert str(path) in str(info.value)
    assert f"store version {LATEST + 1}" in str(info.value)


@pytest.mark.parametrize("argv", [["ps"], ["images"], ["gc", "--dry-run"]])
def test_a_newer_store_through_the_cli_is_one_line(
    argv: list[str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _newer(home / "state.db")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert str(path) in err and "upgrade uniklab" in err
