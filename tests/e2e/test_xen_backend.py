"""The runbook on a real Xen: the virtual Xen host (Xen 4.17 under QEMU), registered as
an inventory host, `host doctor`, Redis as a PV domU on xenbr0 with the runbook's MAC and
DHCP, its address found by MAC, probed through an SSH tunnel, listed, destroyed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.conftest import qemu_processes
from uniklab.cli.main import main
from uniklab.lab import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture
def xen_lab(lab_home: Path) -> Iterator[str]:
    start = time.monotonic()
    assert main(["lab", "up", "--name", "xenlab"]) == 0
    print(f"lab up: {time.monotonic() - start:.1f}s")
    try:
        yield "xenlab"
    finally:
        main(["lab", "down", "--name", "xenlab"])
        assert qemu_processes(str(lab_home)) == []


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_redis_domu_on_xen(xen_lab: str, lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    checks = _json(capsys, "host", "doctor", xen_lab)
    assert isinstance(checks, list) and all(c["ok"] for c in checks), checks

    start = time.monotonic()
    assert (
        main(
            [
                "run",
                "redis",
                "--host",
                xen_lab,
                "--name",
                "redis",
                "--memory",
                "128M",
                "--net",
                "xenbr0",
                "--mac",
                "00:11:22:33:44:55",
                "--wait",
            ]
        )
        == 0
    )
    ready = time.monotonic() - start
    start = time.monotonic()
    rows = _json(capsys, "ps", "--host", xen_lab)
    ps_s = time.monotonic() - start
    assert isinstance(rows, list)
    [row] = rows
    assert (row["name"], row["backend"], row["state"]) == ("redis", "xen", "running")
    assert (row["memory_mb"], row["vcpus"]) == (128, 1)

    info = lab.ip("redis")
    assert info.source == f"dhcp lease on {xen_lab}" and info.host.startswith("10.99.0.")
    assert lab.check("redis").ok
    # a real client, through the same kind of tunnel, PING / SET / GET
    ep = lab.endpoint(lab.get("redis"), 6379)
    r = redis.Redis(ep.host, ep.port, socket_timeout=10)
    assert r.ping() and r.set("foo", "bar") and r.get("foo") == b"bar"
    assert "uniklab-init: exec /bin/redis-server" in lab.logs("redis")

    start = time.monotonic()
    assert main(["destroy", "redis"]) == 0
    destroy_s = time.monotonic() - start
    ex = lab.hosts.executor(lab.hosts.get(xen_lab))
    out = ex.run(["xl", "list"]).stdout
    assert "redis" not in out and "Domain-0" in out
    assert ex.run(["ls", "/var/lib/uniklab/domains"]).stdout.strip() == ""
    print(f"run->PONG {ready:.1f}s, ps over ssh {ps_s:.2f}s, destroy {destroy_s:.2f}s")


def test_xen_bad_input(lab_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any connection: the host is registered but nothing listens there."""
    xen_lab = "deadxen"
    assert main(["host", "add", xen_lab, "--ssh", "root@127.0.0.1", "--port", "1"]) == 0
    for argv, msg in [
        (["run", "redis", "--host", xen_lab], "give --net BRIDGE"),
        (["run", "redis", "--host", xen_lab, "--net", "xenbr0", "-p", "1:6379"], "-p"),
        (["run", "redis", "--host", xen_lab, "--net", "bad bridge"], "invalid network name"),
        (["run", "redis", "--host", "nosuchhost", "--net", "xenbr0"], "no such host"),
    ]:
        assert main(argv) != 0
        assert msg in capsys.readouterr().err, argv
