"""`uniklab events` and `uniklab stats` on real QEMU guests: the lifecycle's events as
JSON lines (run, ready, destroy; a guest killed behind uniklab's back), and one sample of a
running Redis guest's figures."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import cli_json
from tests.support.leaks import assert_nothing_left, qemu_processes
from uniklab.cli.main import main
from uniklab.lab import Lab, RunOptions

pytestmark = pytest.mark.e2e


def _events(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["events", "--json", "--no-follow", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _kinds(records: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(r["event"], r["name"]) for r in records]


def test_run_and_destroy_are_events(lab_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "redis", "--name", "e1", "--wait"]) == 0
    assert main(["destroy", "e1"]) == 0
    records = _events(capsys)
    assert _kinds(records) == [("created", "e1"), ("ready", "e1"), ("destroyed", "e1")]
    assert records[0]["image"] == "redis:latest" and records[0]["backend"] == "qemu"
    assert all(str(r["time"]).endswith("Z") for r in records)
    assert _kinds(_events(capsys, "--filter", "event=ready")) == [("ready", "e1")]
    assert _events(capsys, "--filter", "name=other") == []
    assert_nothing_left(lab_home)


def test_a_guest_killed_behind_our_back_is_an_event(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    view = lab.run("redis", RunOptions(name="k1"))
    phoenix = lab.run("redis", RunOptions(name="k2", restart="on-failure"))
    assert view.row.pid and phoenix.row.pid
    os.kill(view.row.pid, signal.SIGKILL)
    os.kill(phoenix.row.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while len(qemu_processes(str(lab_home))) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    capsys.readouterr()
    assert main(["ps"]) == 0  # the next command reconciles
    records = _events(capsys, "--since", "5m")
    assert ("crashed", "k1") in _kinds(records)
    crashed = next(r for r in records if r["event"] == "crashed" and r["name"] == "k1")
    assert crashed["reason"] == "hypervisor process died"
    k2 = [r["event"] for r in records if r["name"] == "k2"]
    assert k2 == ["created", "ready", "crashed", "restarted"]
    lab.destroy("k1")
    lab.destroy("k2")
    assert_nothing_left(lab_home)


def test_an_app_that_ends_is_an_event_with_its_status(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis refuses a bad option and exits 1: the guest powers off on its own, and the next
    command's reconcile records it, as the state says, with the app's status as reason."""
    lab.run("redis", RunOptions(name="x1", args=["--version"], wait=False))
    deadline = time.monotonic() + 120
    while qemu_processes(str(lab_home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not qemu_processes(str(lab_home)), "the guest did not power off"
    [view] = lab.ps()
    assert (view.state, view.row.exit_reason) == ("crashed", "app exited status 1")
    [ended] = [r for r in _events(capsys) if r["name"] == "x1" and r["event"] != "created"]
    assert (ended["event"], ended["reason"]) == ("crashed", "app exited status 1")
    lab.destroy("x1")
    assert_nothing_left(lab_home)


def test_stats_of_a_running_guest(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.run("redis", RunOptions(name="s1"))
    samples = cli_json(capsys, "stats", "--no-stream")
    assert isinstance(samples, list) and len(samples) == 1
    sample: dict[str, Any] = samples[0]
    assert sample["name"] == "s1" and sample["state"] == "running"
    assert sample["rss_bytes"] > 0 and sample["uptime"] > 0 and sample["memory_mb"] > 0
    assert sample["cpu_percent"] is not None and sample["cpu_percent"] >= 0
    assert sample["cpu_seconds"] > 0
    # User-mode networking: no device counts the guest's bytes.
    assert sample["net_rx_bytes"] is None and sample["net_tx_bytes"] is None
    capsys.readouterr()
    assert main(["stats", "--no-stream", "s1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "CPU%", "RSS", "MEM", "UPTIME", "NET", "RX", "/", "TX"]
    assert out[1].split()[0] == "s1" and out[1].split()[-1] == "-"
    lab.destroy("s1")
    assert_nothing_left(lab_home)


def test_api_stats_and_events(lab_home: Path) -> None:
    from uniklab import api

    with api.Client(lab_home) as client:
        vm = client.run("redis", name="a1")
        s = vm.stats(interval=0.3)
        assert s.name == "a1" and s.state == "running"
        assert s.cpu_percent is not None and s.rss_bytes and s.uptime
        stream = client.stats(["a1"], interval=0.2)
        [again] = next(stream)
        stream.close()
        assert again.name == "a1" and again.cpu_seconds and again.cpu_percent is not None
        # A follower started now sees what comes after (and only that).
        until = datetime.now(UTC) + timedelta(seconds=60)
        follower = api.events(follow=True, until=until, home=lab_home)
        vm.destroy()
        first = next(follower)
        follower.close()
        assert (first.event, first.name) == ("destroyed", "a1")
        kept = [(e.event, e.name) for e in client.events(kinds=["created", "destroyed"])]
        assert kept == [("created", "a1"), ("destroyed", "a1")]
    assert_nothing_left(lab_home)
