"""`uniklab ps`: the Ports column, -q, --filter (docker ps's), and --json only growing.

The running rows point at live ``sleep`` processes whose command line carries the row's
runtime directory (as bench/bench_small.py's ``ps_latency`` does): ps inspects them as it
would QEMU, without a boot."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import wait_for_exec
from uniklab.cli.main import main
from uniklab.net.attachment import Attachment
from uniklab.paths import Paths
from uniklab.state.store import CRASHED, EXITED, RUNNING, Store

# What `ps --json` gave before the Ports column: a consumer's keys stay.
JSON_KEYS_V03 = {
    "name", "id", "image", "digest", "backend", "host", "state", "memory_mb", "vcpus", "pid",
    "cpu_seconds", "uptime", "rss_bytes", "address", "ports", "mac", "accel", "labels",
    "exit_reason", "created",
}  # fmt: skip


@pytest.fixture
def instances(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("UNIKLAB_ACCEL", "tcg")  # no KVM probe for a backend that boots nothing
    store = Store(Paths(home).ensure().db)
    procs: list[subprocess.Popen[bytes]] = []

    def add(name: str, state: str, labels: dict[str, str], forwards: tuple[tuple[int, int], ...]):
        rundir = home / "run" / name
        rundir.mkdir(parents=True)
        pid = None
        if state == RUNNING:
            proc = subprocess.Popen(["sh", "-c", "sleep 600; :", str(rundir)])
            procs.append(proc)
            pid = proc.pid
            wait_for_exec(pid, str(rundir))
        row = store.reserve(
            name=name, image="redis:latest", digest="sha256:" + "1" * 64, backend="qemu",
            host="local", memory_mb=64, vcpus=1, owner_pid=None, spec={}, labels=labels,
        )  # fmt: skip
        nic = Attachment(kind="user", mac="52:54:00:00:00:01", forwards=forwards)
        store.update(
            row.id,
            state=state,
            pid=pid,
            started=time.time(),
            runtime={"rundir": str(rundir), "accel": "tcg"},
            attachments=[nic],
            exit_reason="app exited status 1" if state == CRASHED else None,
        )

    add("redis-a", RUNNING, {"team": "db", "tier": "cache"}, ((40001, 6379),))
    add("redis-b", CRASHED, {"team": "db"}, ())
    add("web", RUNNING, {"team": "front"}, ((40080, 80), (40443, 443)))
    add("job", EXITED, {}, ())
    yield store
    for proc in procs:
        proc.kill()
        proc.wait()
    store.close()


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_table_has_ports(instances: Store, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _out(capsys, "ps").splitlines()
    assert lines[0].split() == [
        "Name", "ID", "Mem", "VCPUs", "State", "Time(s)", "Address", "Ports", "Image", "Backend",
        "Host",
    ]  # fmt: skip
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert "127.0.0.1 " in rows["redis-a"] and "127.0.0.1:40001->6379" in rows["redis-a"]
    assert "127.0.0.1:40080->80,127.0.0.1:40443->443" in rows["web"]
    assert "crashed (app exited status 1)" in rows["redis-b"]


def test_quiet(instances: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert _out(capsys, "ps", "-q") == "redis-a\nredis-b\nweb\njob\n"
    assert _out(capsys, "ps", "--quiet", "--filter", "state=running") == "redis-a\nweb\n"


@pytest.mark.parametrize(
    "filters,names",
    [
        (["state=running"], ["redis-a", "web"]),
        (["state=exited", "state=crashed"], ["redis-b", "job"]),  # either state
        (["label=team=db"], ["redis-a", "redis-b"]),
        (["label=tier"], ["redis-a"]),  # the key is set
        (["name=redis"], ["redis-a", "redis-b"]),
        (["name=redis", "state=running"], ["redis-a"]),  # all terms must match
        (["label=team=db", "label=tier=cache", "name=-a"], ["redis-a"]),
        (["name=nothing"], []),
    ],
)
def test_filters(
    filters: list[str], names: list[str], instances: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [x for f in filters for x in ("--filter", f)]
    assert _out(capsys, "ps", "-q", *argv).split() == names
    rows = json.loads(_out(capsys, "ps", "--json", *argv))
    assert [r["name"] for r in rows] == names


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--filter", "status=running"], "invalid filter 'status=running': use state=STATE"),
        (["--filter", "state"], "invalid filter 'state'"),
        (
            ["--filter", "state=sleeping"],
            "a state is one of running, paused, stopped, exited, crashed, creating",
        ),
        (["--filter", "label=bad key"], "invalid label key"),
        (["-q", "--json"], "-q and --json: choose one"),
    ],
)
def test_bad_filters(
    argv: list[str], message: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ps", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_json_only_grows(instances: Store, capsys: pytest.CaptureFixture[str]) -> None:
    rows = {r["name"]: r for r in json.loads(_out(capsys, "ps", "--json"))}
    assert all(set(r) >= JSON_KEYS_V03 for r in rows.values())
    assert rows["redis-a"]["address"] == "127.0.0.1:40001->6379"  # as before
    assert rows["web"]["ports"] == [{"host": 40080, "guest": 80}, {"host": 40443, "guest": 443}]
    assert rows["redis-a"]["pid"] and os.path.exists(f"/proc/{rows['redis-a']['pid']}")
