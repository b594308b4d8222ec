"""The event stream of a home (uniklab.events): whole records from concurrent writers,
rotation, a follower that sees what is appended (across a rotation), filters, times."""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from uniklab import events
from uniklab.errors import UsageError
from uniklab.paths import Paths

WRITER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from uniklab import events
path, who, n, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    rec = events.Event(datetime.now(UTC), "created", who, {"i": i, "pad": "x" * 300})
    events.append(path, rec.to_json(), max_bytes=limit)
"""


def _writers(path: Path, n_procs: int, n_each: int, limit: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"w{k}", str(n_each), str(limit)]
        )
        for k in range(n_procs)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0


def _lines(*paths: Path) -> list[dict[str, object]]:
    out = []
    for p in paths:
        if p.exists():
            out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    _writers(paths.events, n_procs=4, n_each=200, limit=events.MAX_BYTES * 100)
    records = _lines(paths.events)  # json.loads fails on a torn or interleaved line
    assert len(records) == 800
    for k in range(4):
        assert [r["i"] for r in records if r["name"] == f"w{k}"] == list(range(200))
    assert stat.S_IMODE(os.stat(paths.events).st_mode) == 0o600


def test_rotation_under_concurrent_writers_keeps_whole_records(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    limit = 20_000
    _writers(paths.events, n_procs=3, n_each=150, limit=limit)
    rotated = paths.events.with_name("events.jsonl.1")
    assert rotated.exists()
    for p in (paths.events, rotated):
        assert p.stat().st_size <= limit
    records = _lines(rotated, paths.events)
    assert records, "rotation lost everything"
    # Oldest first across the two generations, and each writer's records in its order.
    for k in range(3):
        mine = [int(str(r["i"])) for r in records if r["name"] == f"w{k}"]
        assert mine == sorted(mine)
    assert [e.name for e in events.read(paths)] == [r["name"] for r in records]


def test_emit_and_read_with_filters(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    events.emit(paths, "created", "a", image="redis:latest")
    events.emit(paths, "created", "b")
    events.emit(paths, "crashed", "a", reason="app exited status 3")
    events.emit(paths, "destroyed", "a", event="not the kind")  # reserved keys are dropped
    got = list(events.read(paths))
    assert [(e.event, e.name) for e in got] == [
        ("created", "a"),
        ("created", "b"),
        ("crashed", "a"),
        ("destroyed", "a"),
    ]
    assert got[0].detail == {"image": "redis:latest"} and got[3].detail == {}
    assert got[0].time.tzinfo is not None
    assert [e.event for e in events.read(paths, names=["a"], kinds=["crashed", "destroyed"])] == [
        "crashed",
        "destroyed",
    ]
    assert list(events.read(paths, since=datetime.now(UTC) + timedelta(hours=1))) == []
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    old = Paths(tmp_path / "old")
    old.home.mkdir()
    for minute in range(5):
        rec = events.Event(t0 + timedelta(minutes=minute), "created", f"m{minute}")
        events.append(old.events, rec.to_json(), max_bytes=events.MAX_BYTES)
    window = events.read(old, since=t0 + timedelta(minutes=1), until=t0 + timedelta(minutes=3))
    assert [e.name for e in window] == ["m1", "m2", "m3"]
    # The file is the interface: one JSON object a line, time in UTC with milliseconds.
    first = json.loads(paths.events.read_text().splitlines()[0])
    assert first["event"] == "created" and first["image"] == "redis:latest"
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-01-01T00:00:00.000Z")


def test_emit_never_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    events.emit(Paths(tmp_path / "file" / "home"), "created", "a")  # not a directory
    events.emit(Paths(tmp_path / "missing"), "created", "a")
    assert list(events.read(Paths(tmp_path / "missing"))) == []


def test_a_torn_or_foreign_line_is_skipped(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    events.emit(paths, "created", "a")
    with paths.events.open("a") as fh:
        fh.write("not json\n" + '{"event": "x"}\n' + '{"time": "2026-01-01T00:00:00Z",')
    assert [e.name for e in events.read(paths)] == ["a"]


def _follow(paths: Paths, want: int, **kw: object) -> tuple[threading.Thread, queue.Queue[str]]:
    """A follower in a thread, stopping after ``want`` events (or 60 s: bounded)."""
    got: queue.Queue[str] = queue.Queue()
    ready = threading.Event()

    def run() -> None:
        until = datetime.now(UTC) + timedelta(seconds=60)
        stream = events.read(paths, follow=True, until=until, poll_interval=0.01, **kw)  # type: ignore[arg-type]
        ready.set()
        for n, e in enumerate(stream, 1):
            got.put(f"{e.event} {e.name}")
            if n == want:
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    return t, got


def test_follow_sees_appended_records_across_rotation(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    events.emit(paths, "created", "old")  # before the follower: not shown without since
    thread, got = _follow(paths, want=40, kinds=["created"])
    for i in range(40):
        rec = events.Event(datetime.now(UTC), "created", f"n{i}", {"pad": "y" * 200})
        events.append(paths.events, rec.to_json(), max_bytes=6_000)  # rotates once, at ~22
    thread.join(timeout=60)
    assert not thread.is_alive()
    names = [got.get_nowait() for _ in range(got.qsize())]
    assert names == [f"created n{i}" for i in range(40)]


def test_follow_with_since_reads_history_then_new(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    events.emit(paths, "created", "a")
    thread, got = _follow(paths, want=2, since=datetime.now(UTC) - timedelta(minutes=1))
    events.emit(paths, "destroyed", "a")
    thread.join(timeout=60)
    assert [got.get_nowait() for _ in range(got.qsize())] == ["created a", "destroyed a"]


@pytest.mark.parametrize(
    "text,back",
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1.5h", 5400), ("500ms", 0.5)],
)
def test_parse_time_durations(text: str, back: float) -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert events.parse_time(text, now=now) == now - timedelta(seconds=back)


def test_parse_time_points() -> None:
    assert events.parse_time("0") == datetime(1970, 1, 1, tzinfo=UTC)
    assert events.parse_time("2026-11-30T05:00:00Z") == datetime(2026, 11, 30, 5, tzinfo=UTC)
    assert events.parse_time("2026-11-30T05:00").tzinfo is not None  # local time


@pytest.mark.parametrize("bad", ["", "x", "10y", "-5m", "m", "1h 30m", "2026-13-01", "9" * 400])
def test_parse_time_bad(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid --since"):
        events.parse_time(bad)
