"""The event stream of a home: what happened to which instance, as JSON lines a program can follow.

Every record is one line of ``<home>/events.jsonl``: ``{"time": ..., "event": ..., "name": ...,
...detail}``.  Writers append a whole record with one ``O_APPEND`` write under an exclusive
``flock`` of the file, so two commands at once never interleave; past ``MAX_BYTES`` the file is
rotated to ``events.jsonl.1`` (one generation is kept).  Readers poll the file's size and inode,
so a follower survives rotation without re-reading what it has seen.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Collection, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from uniklab.paths import Paths

log = logging.getLogger(__name__)

MAX_BYTES = 1024 * 1024
"""Past this size the stream is rotated to ``events.jsonl.1``."""
POLL_INTERVAL = 0.2
"""How often a follower looks for new records (seconds)."""

# The kinds uniklab emits; a reader accepts any kind, since newer writers may add some.
KINDS = (
    "created",
    "ready",
    "started",
    "stopped",
    "paused",
    "resumed",
    "restarted",
    "exited",
    "crashed",
    "destroyed",
)

_RESERVED = ("time", "event", "name")


@dataclass(frozen=True)
class Event:
    """One record of the stream."""

    time: datetime
    event: str
    name: str
    detail: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """The record as written: ``time``, ``event`` and ``name``, then the detail keys."""
        return {
            "time": format_time(self.time),
            "event": self.event,
            "name": self.name,
            **self.detail,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), default=str, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> Event | None:
        """The event of one line, or None for a line that is not a record (torn or foreign)."""
        try:
            raw = json.loads(line)
            when = datetime.fromisoformat(raw.pop("time"))
            kind, name = raw.pop("event"), raw.pop("name")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(kind, str) or not isinstance(name, str):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls(when, kind, name, raw)


def format_time(when: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``: ``2026-11-30T05:05:22.123Z``."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, *, now: datetime | None = None, what: str = "--since") -> datetime:
    """A point in time as ``docker events`` takes one: a duration back from now (``10m``,
    ``1h30m``, ``2d``), a Unix timestamp, or an ISO-8601 time (local when it names no
    zone).  A bad one is a ``UsageError`` naming ``what``."""
    from uniklab import validate
    from uniklab.errors import UsageError

    value = text.strip()
    now = now or datetime.now(UTC)
    try:
        if _DURATION.fullmatch(value):
            seconds = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(value))
            return now - timedelta(seconds=seconds)
        if re.fullmatch(r"\d+(?:\.\d+)?", value):
            return datetime.fromtimestamp(float(value), UTC)
        when = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        pass
    else:
        return when if when.tzinfo else when.astimezone()
    raise UsageError(
        f"invalid {what} {validate.short(text)}: give a duration back from now (30s, 10m, "
        "1h30m, 2d), a Unix timestamp or a time (2026-11-30T14:05:00, ...Z)"
    )


def _rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def emit(paths: Paths, kind: str, name: str, **detail: object) -> None:
    """Append one event to the home's stream; never raises (a failure is logged at debug)."""
    detail = {k: v for k, v in detail.items() if k not in _RESERVED}
    event = Event(datetime.now(UTC), kind, name, detail)
    try:
        append(paths.events, event.to_json(), max_bytes=MAX_BYTES)
    except Exception as exc:  # an event must never fail the command that emits it
        log.debug("cannot record event %s of %s in %s: %s", kind, name, paths.home, exc)


def append(path: Path, line: str, *, max_bytes: int) -> None:
    """Append ``line`` as one record to ``path``, rotating the file first if it is full."""
    data = (line.rstrip("\n") + "\n").encode()
    for _ in range(10):  # another writer may rotate between our open and our lock
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            if (current.st_ino, current.st_dev) != (st.st_ino, st.st_dev):
                continue  # rotated under us: write to the new file
            if st.st_size and st.st_size + len(data) > max_bytes:
                os.replace(path, _rotated(path))
                continue
            if os.write(fd, data) != len(data):  # a full disk: leave no torn line behind
                os.ftruncate(fd, st.st_size)
                raise OSError(f"short write to {path}")
            return
        finally:
            os.close(fd)  # closing drops the lock
    raise OSError(f"{path} keeps being rotated")


def read(
    paths: Paths,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    follow: bool = False,
    kinds: Collection[str] | None = None,
    names: Collection[str] | None = None,
    poll_interval: float = POLL_INTERVAL,
) -> Generator[Event, None, None]:
    """The events of a home, oldest first, those matching every given filter.

    Without ``since`` a reader that follows starts at the end as of this call (new events
    only, like ``docker events``) and one that does not follow reads the whole history
    kept.  With ``follow`` it waits for new records until ``until`` has passed (or forever
    without one); the caller stops it by closing the generator.
    """
    # Opened now, not at the first next(): what is emitted after this call is seen.
    tail = _Tail(paths.events, at_end=since is None and follow)
    history = since is not None or not follow
    return _read(tail, history, since, until, follow, kinds, names, poll_interval)


def _read(
    tail: _Tail,
    history: bool,
    since: datetime | None,
    until: datetime | None,
    follow: bool,
    kinds: Collection[str] | None,
    names: Collection[str] | None,
    poll_interval: float,
) -> Generator[Event, None, None]:
    interval = min(max(poll_interval, 0.01), 1.0)

    def wanted(e: Event) -> bool:
        return (
            (since is None or e.time >= since)
            and (kinds is None or e.event in kinds)
            and (names is None or e.name in names)
        )

    def past_until(e: Event | None = None) -> bool:
        if until is None:
            return False
        return (e.time if e is not None else datetime.now(UTC)) > until

    try:
        if history:
            for e in tail.rotated_records():
                if past_until(e):
                    return
                if wanted(e):
                    yield e
        while True:
            for e in tail.records():
                if past_until(e):
                    return
                if wanted(e):
                    yield e
            if not follow or past_until():
                return
            time.sleep(interval)
    finally:
        tail.close()


def _records(fh: IO[bytes]) -> Iterator[Event]:
    for line in fh:
        if line.endswith(b"\n"):
            e = Event.from_json(line)
            if e is not None:
                yield e


class _Tail:
    """Reads the complete lines appended to a file, across its rotation to ``<path>.1``."""

    def __init__(self, path: Path, *, at_end: bool) -> None:
        self.path = path
        self.fh: IO[bytes] | None = None
        self.partial = b""
        self._open(at_end=at_end)

    def _open(self, *, at_end: bool) -> None:
        try:
            self.fh = self.path.open("rb")
        except FileNotFoundError:
            self.fh = None
            return
        if at_end:
            self.fh.seek(0, os.SEEK_END)
        self.partial = b""

    def rotated_records(self) -> Iterator[Event]:
        """The records of the previous generation (``<path>.1``), unless that is the very
        file this tail has open (rotated since it was opened: its records come anyway)."""
        try:
            old = _rotated(self.path).open("rb")
        except FileNotFoundError:
            return
        with old:
            if self.fh is not None:
                mine, theirs = os.fstat(self.fh.fileno()), os.fstat(old.fileno())
                if (mine.st_ino, mine.st_dev) == (theirs.st_ino, theirs.st_dev):
                    return
            yield from _records(old)

    def records(self) -> Iterator[Event]:
        if self.fh is None:
            self._open(at_end=False)
        if self.fh is None:
            return
        yield from self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # rotated and not yet recreated: the next poll opens the new file
        own = os.fstat(self.fh.fileno())
        if (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev):
            yield from self._drain()  # what was written to the old file before it moved
            self.fh.close()
            self._open(at_end=False)
            yield from self._drain()
        elif st.st_size < self.fh.tell():
            self.fh.seek(0)  # truncated by hand: start over
            self.partial = b""

    def _drain(self) -> Iterator[Event]:
        assert self.fh is not None
        while chunk := self.fh.read(65536):
            lines = (self.partial + chunk).split(b"\n")
            self.partial = lines.pop()
            for line in lines:
                e = Event.from_json(line)
                if e is not None:
                    yield e

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
