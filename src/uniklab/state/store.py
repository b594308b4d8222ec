"""The state store: one SQLite database (WAL) that remembers images and instances.

Every write is a short transaction; SQLite's locking plus a busy timeout lets several
uniklab processes share the file.  Name uniqueness is enforced by the schema, so two
concurrent ``run --name x`` cannot both win.  The schema is versioned (``migrations``);
a damaged file is reported as one ``StoreDamagedError`` naming it, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniklab.errors import (
    ConflictError,
    HostFullError,
    NotFoundError,
    StoreDamagedError,
    StoreError,
)
from uniklab.net import attachment
from uniklab.net.attachment import Attachment
from uniklab.state import migrations

# Instance states.  "creating" rows reserve a name while a CLI builds the instance; a
# creating row whose owner process is gone is debris from a killed CLI.  "paused": frozen
# by `pause`; "stopped": ended by `stop`, kept (spec, MAC, ports) for `start`.
CREATING, RUNNING, EXITED, CRASHED = "creating", "running", "exited", "crashed"
PAUSED, STOPPED = "paused", "stopped"
LIVE = (CREATING, RUNNING, PAUSED)  # what occupies a host


@dataclass
class InstanceRow:
    id: int
    name: str
    image: str
    digest: str
    backend: str
    host: str
    state: str
    owner_pid: int | None
    pid: int | None
    memory_mb: int
    vcpus: int
    created: float
    started: float | None
    rundir: str | None
    spec: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    exit_reason: str | None = None
    attachments: list[Attachment] = field(default_factory=list)  # its NICs, in order

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> InstanceRow:
        data = dict(row)
        for key in ("spec", "runtime", "labels"):
            data[key] = json.loads(data[key] or "{}")
        data["attachments"] = attachment.from_json(json.loads(data["attachments"] or "[]"))
        return cls(**data)


@dataclass(frozen=True)
class ImageRow:
    name: str
    tag: str
    digest: str
    created: float


@dataclass
class NetworkRow:
    name: str
    state: str
    owner_pid: int | None
    subnet: str | None
    gateway: str | None
    bridge: str
    netns: str | None
    dhcp: bool
    made_bridge: bool
    made_netns: bool
    dnsmasq_pid: int | None
    rundir: str
    created: float

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> NetworkRow:
        data = dict(row)
        for key in ("dhcp", "made_bridge", "made_netns"):
            data[key] = bool(data[key])
        return cls(**data)


# SQLite's primary result codes for "this file is not (or no longer) a database".
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_damage(exc: sqlite3.Error) -> bool:
    # By result code, not message text; extended codes (SQLITE_CORRUPT_*) keep the primary
    # code in their low byte.
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DAMAGE_CODES


def damaged(path: Path, exc: sqlite3.Error) -> StoreDamagedError:
    return StoreDamagedError(
        f"{path} is damaged ({exc}): run `uniklab store rebuild` to move it aside and "
        "rebuild the store from the images on disk"
    )


def _to_wal(conn: sqlite3.Connection, wait: float = 30.0) -> None:
    """Put the database in WAL mode.  Switching an older store (rollback journal) needs it
    to itself for a moment, and SQLite answers "database is locked" at once rather than
    through the busy timeout when another process has it open: try again, bounded."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class Store:
    """Thin typed access to the state database.

    A store whose file turns out damaged is still constructed, with ``damage`` set, and
    every use raises that error: ``uniklab gc`` and ``uniklab store rebuild`` must work on
    a home whose rows are lost, and every other command says so in one line at its first
    use of the store.  A store from a newer uniklab raises at once: nothing here may read it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damage: StoreDamagedError | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from the start: SQLite gives the WAL and shm files the database's mode.
            # Only when the file is new: POSIX record locks belong to the process, so closing
            # any descriptor of an open database drops the locks this process's other SQLite
            # connections hold on it; another process then checkpoints and deletes the WAL
            # under them, and their writes are lost.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if p.exists():
                    p.chmod(0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror}") from exc
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, timeout=30.0, isolation_level=None
        )
        # A dropped Store closes its connection at once: CPython closes an unreferenced
        # sqlite3.Connection only when the cyclic collector gets to it.
        self._closer = weakref.finalize(self, self._conn.close)
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA busy_timeout = 30000")
            _to_wal(self._conn)
            self._conn.execute("PRAGMA synchronous = NORMAL")
            migrations.migrate(self._conn, path)
        except sqlite3.Error as exc:
            self._conn.close()
            self._conn = None
            if not is_damage(exc):
                raise StoreError(f"cannot open {path}: {exc}") from exc
            self.damage = damaged(path, exc)
            self.damage.__cause__ = exc
        except BaseException:
            self._conn.close()
            raise
        path.chmod(0o600)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            assert self.damage is not None
            # A new error per use: re-raising one instance would grow its traceback.
            raise StoreDamagedError(str(self.damage)) from self.damage.__cause__
        return self._conn

    @property
    def version(self) -> int:
        """The schema version of the open store (``migrations.MIGRATIONS``)."""
        with self._guard():
            return migrations.version(self._db)

    def close(self) -> None:
        self._closer()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Corruption found by any statement, at any time, becomes the one-line error."""
        try:
            yield
        except sqlite3.Error as exc:
            if is_damage(exc):
                raise damaged(self.path, exc) from exc
            raise

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._guard():
            return self._db.execute(sql, params).fetchall()

    def _one(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Row | None:
        with self._guard():
            row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
            return row

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        with self._guard():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                # A statement that failed on a corrupt page may have ended the transaction.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            else:
                db.execute("COMMIT")

    # -- images -----------------------------------------------------------------------
    def put_image(self, name: str, tag: str, digest: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO images(name, tag, digest, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name, tag) DO UPDATE SET digest=excluded.digest, "
                "created=CASE WHEN images.digest=excluded.digest THEN images.created "
                "ELSE excluded.created END",
                (name, tag, digest, time.time()),
            )

    def images(self) -> list[ImageRow]:
        rows = self._all("SELECT * FROM images ORDER BY name, tag")
        return [ImageRow(**dict(r)) for r in rows]

    def image(self, name: str, tag: str) -> ImageRow | None:
        row = self._one("SELECT * FROM images WHERE name=? AND tag=?", (name, tag))
        return ImageRow(**dict(row)) if row else None

    def delete_image(self, name: str, tag: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM images WHERE name=? AND tag=?", (name, tag))

    def digest_in_use(self, digest: str) -> bool:
        row = self._one(
            "SELECT 1 FROM images WHERE digest=? UNION ALL SELECT 1 FROM instances WHERE digest=?",
            (digest, digest),
        )
        return row is not None

    # -- instances --------------------------------------------------------------------
    def reserve(
        self,
        *,
        name: str,
        image: str,
        digest: str,
        backend: str,
        host: str,
        memory_mb: int,
        vcpus: int,
        owner_pid: int,
        spec: dict[str, Any],
        labels: dict[str, str],
        limit: int | None = None,
    ) -> InstanceRow:
        """Insert a 'creating' row; the UNIQUE name makes this the point of no double-use,
        and, with ``limit``, of no host running more live instances than that (counted in
        the same transaction: two runs never both take a host's last place)."""
        try:
            with self.transaction() as db:
                if limit is not None:
                    (live,) = db.execute(
                        "SELECT COUNT(*) FROM instances WHERE host = ? AND state IN (?, ?, ?)",
                        (host, *LIVE),
                    ).fetchone()
                    if live >= limit:
                        raise HostFullError(
                            f"host {host} runs {live} instance(s), its limit "
                            f"(uniklab host set {host} --max-instances N)"
                        )
                cur = db.execute(
                    "INSERT INTO instances(name, image, digest, backend, host, state, owner_pid,"
                    " memory_mb, vcpus, created, spec, labels)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        image,
                        digest,
                        backend,
                        host,
                        CREATING,
                        owner_pid,
                        memory_mb,
                        vcpus,
                        time.time(),
                        json.dumps(spec),
                        json.dumps(labels),
                    ),
                )
                row_id = cur.lastrowid
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"an instance named {name!r} already exists") from exc
        assert row_id is not None
        return self.instance_by_id(row_id)

    def update(self, row_id: int, **fields: Any) -> None:
        if not fields:
            return
        for key in ("spec", "runtime", "labels"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        if "attachments" in fields:
            fields["attachments"] = json.dumps(attachment.to_json(fields["attachments"]))
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE instances SET {cols} WHERE id=?", (*fields.values(), row_id))

    def claim_ports(
        self,
        row_id: int,
        wanted: list[tuple[int, int]],
        free_port: Callable[[], int],
        port_free: Callable[[int], bool],
    ) -> list[tuple[int, int]]:
        """Choose host ports for (host, guest) pairs (host 0: any free port) that no other
        instance holds, and record them, in one write transaction."""
        with self.transaction() as db:
            used: set[int] = set()
            for r in db.execute("SELECT spec FROM instances WHERE id != ?", (row_id,)):
                used.update(int(h) for h, _ in json.loads(r["spec"]).get("publish", []))
            out: list[tuple[int, int]] = []
            for host, guest in wanted:
                if host == 0:
                    for _ in range(100):
                        host = free_port()
                        if host not in used and all(host != h for h, _ in out):
                            break
                elif host in used or not port_free(host):
                    raise ConflictError(f"port {host} on 127.0.0.1 is already in use")
                out.append((host, guest))
            spec = json.loads(
                db.execute("SELECT spec FROM instances WHERE id=?", (row_id,)).fetchone()["spec"]
            )
            spec["publish"] = out
            db.execute("UPDATE instances SET spec=? WHERE id=?", (json.dumps(spec), row_id))
        return out

    def delete_instance(self, row_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM instances WHERE id=?", (row_id,))

    def instances(self) -> list[InstanceRow]:
        rows = self._all("SELECT * FROM instances ORDER BY id")
        return [InstanceRow.from_sql(r) for r in rows]

    def instance_by_id(self, row_id: int) -> InstanceRow:
        row = self._one("SELECT * FROM instances WHERE id=?", (row_id,))
        if row is None:
            raise NotFoundError(f"no instance with id {row_id}")
        return InstanceRow.from_sql(row)

    def instance(self, name_or_id: str) -> InstanceRow:
        row = self._one("SELECT * FROM instances WHERE name=?", (name_or_id,))
        if row is None and name_or_id.isdigit():
            row = self._one("SELECT * FROM instances WHERE id=?", (int(name_or_id),))
        if row is None:
            raise NotFoundError(f"no such instance: {name_or_id}")
        return InstanceRow.from_sql(row)

    # -- networks ---------------------------------------------------------------------
    def reserve_network(self, row: NetworkRow) -> None:
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO networks(name, state, owner_pid, subnet, gateway, bridge, netns,"
                    " dhcp, made_bridge, made_netns, dnsmasq_pid, rundir, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.name,
                        row.state,
                        row.owner_pid,
                        row.subnet,
                        row.gateway,
                        row.bridge,
                        row.netns,
                        int(row.dhcp),
                        int(row.made_bridge),
                        int(row.made_netns),
                        row.dnsmasq_pid,
                        row.rundir,
                        row.created,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"a network named {row.name!r} already exists") from exc

    def update_network(self, name: str, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE networks SET {cols} WHERE name=?", (*fields.values(), name))

    def delete_network(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM networks WHERE name=?", (name,))

    def networks(self) -> list[NetworkRow]:
        rows = self._all("SELECT * FROM networks ORDER BY name")
        return [NetworkRow.from_sql(r) for r in rows]

    def network(self, name: str) -> NetworkRow:
        row = self._one("SELECT * FROM networks WHERE name=?", (name,))
        if row is None:
            raise NotFoundError(f"no such network: {name}")
        return NetworkRow.from_sql(row)

    # -- hosts (the inventory keeps each host as one validated JSON document) ----------
    def put_host(self, name: str, doc: str, *, replace: bool = False) -> None:
        self.put_hosts({name: doc}, replace=replace)

    def put_hosts(self, docs: Mapping[str, str], *, replace: bool = False) -> None:
        """Write host documents by name: all of them or, on a clash, none."""
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        now = time.time()
        with self.transaction() as db:
            for name, doc in docs.items():
                try:
                    db.execute(
                        f"{verb} INTO hosts(name, doc, created) VALUES (?, ?, ?)", (name, doc, now)
                    )
                except sqlite3.IntegrityError as exc:
                    raise ConflictError(f"a host named {name!r} already exists") from exc

    def hosts(self) -> list[tuple[str, str]]:
        rows = self._all("SELECT name, doc FROM hosts ORDER BY name")
        return [(r["name"], r["doc"]) for r in rows]

    def host_doc(self, name: str) -> str:
        row = self._one("SELECT doc FROM hosts WHERE name=?", (name,))
        if row is None:
            raise NotFoundError(f"no such host: {name}")
        return str(row["doc"])

    def delete_host(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM hosts WHERE name=?", (name,))
