"""The main job, for real: bake Redis, boot it under QEMU (TCG here), talk to it, destroy it."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import redis

from tests.support.cli import cli_json
from tests.support.clock import clock_bound
from tests.support.leaks import assert_nothing_left, qemu_processes
from uniklab.cli.main import main
from uniklab.errors import ProbeTimeoutError
from uniklab.lab import Lab, RunOptions

pytestmark = pytest.mark.e2e


def _client(lab: Lab, name: str) -> redis.Redis:
    info = lab.ip(name)
    return redis.Redis("127.0.0.1", info.ports[0][0], socket_timeout=5)


def test_bake_is_cached(lab: Lab) -> None:
    first = lab.bake("redis")
    again = lab.bake("redis")
    assert again.cached and again.manifest.digest == first.manifest.digest
    assert [m.ref for m in lab.list_images()] == ["redis:latest"]


def test_run_ping_set_get_destroy(lab: Lab, lab_home: Path) -> None:
    view = lab.run("redis", RunOptions(name="r1", memory="128M", vcpus=1))
    assert view.state == "running" and view.row.memory_mb == 128 and view.row.vcpus == 1
    r = _client(lab, "r1")
    assert r.ping() is True
    assert r.set("foo", "bar") and r.get("foo") == b"bar"
    [row] = lab.ps()
    assert row.inspection is not None and row.inspection.alive
    logs = lab.logs("r1")
    assert "uniklab-init: exec /bin/redis-server" in logs
    assert lab.ip("r1").guest_address == "10.0.2.15"
    assert lab.check("r1").ok
    lab.destroy("r1")
    assert_nothing_left(lab_home)


def test_guest_clock_agrees_with_host(lab: Lab) -> None:
    """Redis TIME is the guest's wall clock.  The server read it between our `before` and
    `after`, so the smallest disagreement that sample allows is its distance outside that
    window; the best of 20 samples must be under 50 ms (a loaded host only widens windows,
    it cannot make a wrong clock look right)."""
    lab.run("redis", RunOptions(name="clock"))
    bound = clock_bound(_client(lab, "clock"))
    lab.destroy("clock")
    assert bound < 0.050, f"guest clock off by at least {bound * 1000:.1f} ms"


def test_cli_flow(lab_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "redis", "--name", "c2", "--memory", "128M", "--wait"]) == 0
    rows = cli_json(capsys, "ps")
    assert isinstance(rows, list)
    c2 = next(r for r in rows if r["name"] == "c2")
    assert c2["state"] == "running" and c2["memory_mb"] == 128 and c2["vcpus"] == 1
    assert main(["check", "c2"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["ip", "c2"]) == 0
    assert "127.0.0.1" in capsys.readouterr().out
    assert main(["logs", "c2", "-n", "3"]) == 0
    assert main(["destroy", "--all"]) == 0
    assert_nothing_left(lab_home)


def test_killed_hypervisor_is_reconciled(lab: Lab, lab_home: Path) -> None:
    view = lab.run("redis", RunOptions(name="k1"))
    assert view.row.pid
    os.kill(view.row.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while qemu_processes(str(lab_home)) and time.monotonic() < deadline:
        time.sleep(0.05)
    [row] = lab.ps()
    assert row.state == "crashed" and row.row.exit_reason == "hypervisor process died"
    lab.destroy("k1")
    assert_nothing_left(lab_home)


def test_app_that_exits_is_reported_and_cleaned(lab: Lab, lab_home: Path) -> None:
    """Redis refuses a bad option and exits 1: run --wait fails with the console tail."""
    with pytest.raises(ProbeTimeoutError) as err:
        lab.run("redis", RunOptions(name="bad", args=["--port", "notaport"], timeout=60))
    assert "stopped before it was ready (app exited status 1)" in str(err.value)
    assert "app exited status 1" in err.value.console_tail
    assert_nothing_left(lab_home)


def test_port_in_use_and_name_in_use(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["run", "redis", "--name", "p1", "-p", f"{port}:6379"]) == 4
        assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
    assert_nothing_left(lab_home)
    lab.run("redis", RunOptions(name="dup", wait=False))
    assert main(["run", "redis", "--name", "dup"]) == 4
    assert "already exists" in capsys.readouterr().err
    assert [v.name for v in lab.ps()] == ["dup"]
    lab.destroy("dup")
    assert_nothing_left(lab_home)


def test_restart_on_failure(lab: Lab, lab_home: Path) -> None:
    """kill -9 of the guest's QEMU: the next command relaunches it (same name, port)."""
    view = lab.run("redis", RunOptions(name="phoenix", restart="on-failure"))
    port = view.forwards[0][0]
    assert view.row.pid
    os.kill(view.row.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while qemu_processes(str(lab_home)) and time.monotonic() < deadline:
        time.sleep(0.05)
    [again] = lab.ps()
    assert again.state == "running" and again.row.pid != view.row.pid
    assert again.row.runtime["restarts"] == 1
    assert again.row.runtime["last_exit"] == "hypervisor process died"
    lab.wait_ready(again, lab.image("redis"), timeout=120)
    assert redis.Redis("127.0.0.1", port, socket_timeout=5).ping()
    lab.destroy("phoenix")
    assert_nothing_left(lab_home)
