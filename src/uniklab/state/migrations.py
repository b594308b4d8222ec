"""The state store's schema, as numbered steps: ``PRAGMA user_version`` says how many ran.

A release that changes the schema appends one step (``_sql("ALTER TABLE instances ADD
COLUMN ...")``) and never edits an old one: a home made by any earlier uniklab is brought
up to date by running the steps it lacks, in one transaction.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from uniklab.errors import StoreError
from uniklab.net import attachment
from uniklab.net.attachment import Attachment

Migration = Callable[[sqlite3.Connection], None]


def _sql(*statements: str) -> Migration:
    # One statement per execute(): executescript() would COMMIT the migration's transaction.
    def step(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)

    return step


# Version 1 is the schema uniklab 0.1 and 0.2 made without numbering it.  IF NOT EXISTS
# lets the same step adopt such a store (user_version 0, tables present) as well as create
# a new one.
V1 = _sql(
    """CREATE TABLE IF NOT EXISTS images (
        name TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (name, tag)
    )""",
    """CREATE TABLE IF NOT EXISTS instances (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        image TEXT NOT NULL,
        digest TEXT NOT NULL,
        backend TEXT NOT NULL,
        host TEXT NOT NULL DEFAULT 'local',
        state TEXT NOT NULL,
        owner_pid INTEGER,
        pid INTEGER,
        memory_mb INTEGER NOT NULL,
        vcpus INTEGER NOT NULL,
        created REAL NOT NULL,
        started REAL,
        rundir TEXT,
        spec TEXT NOT NULL DEFAULT '{}',
        runtime TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '{}',
        exit_reason TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS hosts (
        name TEXT PRIMARY KEY,
        doc TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS networks (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        owner_pid INTEGER,
        subnet TEXT,
        gateway TEXT,
        bridge TEXT NOT NULL,
        netns TEXT,
        dhcp INTEGER NOT NULL,
        made_bridge INTEGER NOT NULL DEFAULT 0,
        made_netns INTEGER NOT NULL DEFAULT 0,
        dnsmasq_pid INTEGER,
        rundir TEXT NOT NULL,
        created REAL NOT NULL
    )""",
)


def _legacy_nics(runtime: dict[str, Any], publish: object) -> list[Attachment]:
    """The NICs of a row of uniklab ≤ 0.2, which kept them as runtime keys: ``nics``
    (taps on uniklab networks), ``xen_nics`` (a Xen host's bridges), else one user-mode
    NIC (``mac``, ``forwards``); the address found is ``address``/``address_source``."""
    out: list[Attachment] = []
    if runtime.get("nics"):
        for n in runtime["nics"]:
            keys = ("mac", "net", "bridge", "tap", "netns", "addr", "gw")
            out.append(Attachment(kind="bridge", **{k: n.get(k) for k in keys}))
    elif runtime.get("xen_nics"):
        for n in runtime["xen_nics"]:
            xen_keys = ("mac", "bridge", "addr", "gw")
            out.append(Attachment(kind="host-bridge", **{k: n.get(k) for k in xen_keys}))
    elif runtime.get("mac"):
        pairs: Any = runtime.get("forwards") or publish or []
        forwards = tuple((int(h), int(g)) for h, g in pairs)
        out.append(Attachment(kind="user", mac=str(runtime["mac"]), forwards=forwards))
    if out and runtime.get("address"):
        found, by = str(runtime["address"]), runtime.get("address_source")
        out[0] = dataclasses.replace(out[0], found=found, found_by=by)
    return out


def _legacy_launch_nics(nics: list[dict[str, Any]], netns: str | None) -> list[Attachment]:
    """A restart policy's launch spec kept each NIC as QEMU-ish {mode: user|tap, …}."""
    out = []
    for n in nics:
        if n.get("mode") == "user":
            fw = tuple((int(h), int(g)) for h, g in n.get("forwards", []))
            out.append(Attachment(kind="user", mac=n["mac"], forwards=fw))
        elif n.get("tap"):
            out.append(
                Attachment(
                    kind="bridge", mac=n["mac"], tap=n["tap"], bridge=n.get("bridge"), netns=netns
                )
            )
        else:
            out.append(Attachment(kind="host-bridge", mac=n["mac"], bridge=n.get("bridge")))
    return out


_LEGACY_KEYS = ("nics", "xen_nics", "mac", "forwards", "address", "address_source")


def v2_attachments(db: sqlite3.Connection) -> None:
    """Version 2: an instance's NICs are one typed list (``net.attachment``) in a column of
    their own, instead of five runtime keys."""
    db.execute("ALTER TABLE instances ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]'")
    for row_id, runtime_text, spec_text in db.execute(
        "SELECT id, runtime, spec FROM instances"
    ).fetchall():
        runtime = json.loads(runtime_text or "{}")
        spec = json.loads(spec_text or "{}")
        nics = _legacy_nics(runtime, spec.get("publish"))
        launch = runtime.get("launch")
        if isinstance(launch, dict) and launch.get("nics"):
            launch["nics"] = attachment.to_json(
                _legacy_launch_nics(launch["nics"], launch.get("netns"))
            )
        for key in _LEGACY_KEYS:
            runtime.pop(key, None)
        db.execute(
            "UPDATE instances SET attachments=?, runtime=? WHERE id=?",
            (json.dumps(attachment.to_json(nics)), json.dumps(runtime), row_id),
        )


# MIGRATIONS[i] takes a store from version i to version i + 1.  Append only.
MIGRATIONS: tuple[Migration, ...] = (V1, v2_attachments)


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def too_new(path: Path, found: int, known: int) -> StoreError:
    return StoreError(
        f"{path} was written by a newer uniklab (store version {found}, this uniklab "
        f"reads up to {known}): upgrade uniklab, or set UNIKLAB_HOME to another directory"
    )


def migrate(db: sqlite3.Connection, path: Path, steps: Sequence[Migration] | None = None) -> int:
    """Bring the store on ``db`` (in autocommit mode) to the newest version; returns it.

    Two processes may open an old store at once: the write lock is taken first and the
    version read again under it, so the second finds the work done and runs no step twice.
    """
    steps = MIGRATIONS if steps is None else steps
    latest = len(steps)
    current = version(db)
    if current == latest:
        return current  # every command takes this path: no write lock
    if current > latest:
        raise too_new(path, current, latest)
    db.execute("BEGIN IMMEDIATE")
    try:
        current = version(db)
        if current > latest:
            raise too_new(path, current, latest)
        for step in steps[current:]:
            step(db)
        # The header's user_version is written in the same transaction as the steps: a
        # crash leaves the old version and the old schema, never one without the other.
        db.execute(f"PRAGMA user_version = {latest:d}")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return latest
