"""Channels for real (QEMU under TCG, virtio-serial): guests with no NIC reached, probed
and joined over channels; Redis through redis-py, redis-cli -s, and replication over a
link; what a dead peer, destroy and gc leave."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.support.leaks import assert_nothing_left
from uniklab import daemons
from uniklab.api import Client
from uniklab.channels import config_path, pid_path
from uniklab.cli.main import main
from uniklab.errors import NotFoundError, UsageError
from uniklab.lab import Lab, RunOptions

pytestmark = pytest.mark.e2e

WAIT = 30.0  # for replication to catch up, or a dead peer's EOF to arrive


def _proxies(home: Path) -> list[tuple[int, str]]:
    return daemons.scan("uniklab.channel_proxy", str(home))


def _until(what: str, ok: object) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if ok():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {WAIT:.0f}s: {what}")


def _roundtrip(path: str, request: bytes) -> bytes:
    """``request`` on one connection, half-closed after it: all the answer until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(WAIT)
        s.connect(path)
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _concurrent_clients_get_what_they_set(path: str) -> None:
    """Clients at once, values up to 300 KB (frames cut and joined, backlogs filling),
    and pipelined bursts: each gets back exactly what it wrote."""
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            r = redis.Redis(unix_socket_path=path, protocol=2, socket_timeout=WAIT)
            for j in range(6):
                value = os.urandom((10, 20_000, 300_000)[(i + j) % 3])
                r.set(f"w{i}", value)
                if r.get(f"w{i}") != value:
                    errors.append(f"client {i}: value {j} came back changed")
            pipe = r.pipeline(transaction=False)
            for j in range(100):
                pipe.set(f"p{i}:{j}", str(j) * 40)
            pipe.execute()
            if r.mget([f"p{i}:{j}" for j in range(100)]) != [
                (str(j) * 40).encode() for j in range(100)
            ]:
                errors.append(f"client {i}: pipelined values came back changed")
            r.close()
        except redis.RedisError as exc:
            errors.append(f"client {i}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not any(t.is_alive() for t in threads) and errors == []


def test_guest_without_nic_over_its_channel(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ready means the redis probe passed: it went over the channel (there is no NIC).
    view = lab.run("redis", RunOptions(name="c1", net="none"))
    assert view.row.attachments == [] and view.address == "channel:6379"
    with pytest.raises(NotFoundError, match="has no NIC"):
        lab.ip("c1")
    capsys.readouterr()
    assert main(["channel", "c1", "6379"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(lab.channel("c1", 6379)) and Path(path).is_socket()

    with Client(lab_home) as client:
        inst = client.get("c1")
        r = inst.redis(via="channel")
        assert r.ping() is True and r.set("k", "v" * 100_000) and r.get("k") == b"v" * 100_000
        assert inst.redis().get("k") == b"v" * 100_000  # "auto": no NIC, so the channel
        # Several clients at once, each its own connection in the guest.
        clients = [redis.Redis(unix_socket_path=path, protocol=2) for _ in range(4)]
        for i, c in enumerate(clients):
            c.set(f"c{i}", i)
        assert [int(c.get(f"c{i}") or -1) for i, c in enumerate(clients)] == [0, 1, 2, 3]
        assert len({c.client_id() for c in clients}) == 4
        _concurrent_clients_get_what_they_set(path)
        with inst.channel(6379) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(100) == b"+PONG\r\n"
        with pytest.raises(NotFoundError, match="no NIC"):
            inst.endpoint(6379)
    # A client's EOF is the guest connection's: Redis answers, then closes.
    assert _roundtrip(path, b"PING\r\nGET k2\r\n") == b"+PONG\r\n$-1\r\n"
    assert lab.check("c1").ok
    if shutil.which("redis-cli"):

        def redis_cli(*args: str) -> bytes:
            cmd = ["redis-cli", "-s", path, *args]
            return subprocess.run(cmd, capture_output=True, timeout=30, check=True).stdout

        assert redis_cli("set", "a", "b") == b"OK\n" and redis_cli("get", "a") == b"b\n"
    with pytest.raises(NotFoundError, match="no channel to port 80"):
        lab.channel("c1", 80)

    # The guest dies under a connected client: the client reads EOF, it does not hang.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(WAIT)
        s.connect(path)
        s.sendall(b"PING\r\n")
        assert s.recv(100) == b"+PONG\r\n"
        assert view.row.pid
        os.kill(view.row.pid, signal.SIGKILL)
        assert s.recv(100) == b""
    _until("the proxy ends with its guest", lambda: not _proxies(lab_home))
    lab.destroy("c1")
    assert not list(lab_home.glob("run/*/chan-*.sock"))
    assert_nothing_left(lab_home)


def test_replication_over_a_link_without_nics(lab: Lab, lab_home: Path) -> None:
    lab.run("redis", RunOptions(name="master", net="none"))
    # Redis 7 (Debian 12): replicaof.  The link's local port is not the replica's own.
    lab.run(
        "redis",
        RunOptions(
            name="replica",
            net="none",
            links=["master:6379:16379"],
            args=["--replicaof", "127.0.0.1", "16379"],
        ),
    )
    m = redis.Redis(unix_socket_path=str(lab.channel("master", 6379)), protocol=2)
    r = redis.Redis(unix_socket_path=str(lab.channel("replica", 6379)), protocol=2)
    m.set("greeting", "hello over virtio-serial")
    _until("the replica has the master's key", lambda: r.get("greeting") is not None)
    assert r.get("greeting") == b"hello over virtio-serial"
    assert r.info("replication")["master_link_status"] == "up"
    with pytest.raises(redis.ReadOnlyError):
        r.set("x", 1)

    # The master dies: the replica's link sees EOF (the link goes down), it does not hang.
    lab.destroy("master")
    _until(
        "the replica notices its master is gone",
        lambda: r.info("replication")["master_link_status"] == "down",
    )
    assert "Connection with master lost" in lab.logs("replica")
    # A new master under the old name: the replica, started again, finds it by that name.
    lab.run("redis", RunOptions(name="master", net="none"))
    m = redis.Redis(unix_socket_path=str(lab.channel("master", 6379)), protocol=2)
    m.set("greeting", "hello again")
    lab.restart("replica", timeout=5)
    r = redis.Redis(unix_socket_path=str(lab.channel("replica", 6379)), protocol=2)
    _until("the replica follows the new master", lambda: r.get("greeting") == b"hello again")
    for name in ("master", "replica"):
        lab.destroy(name)
    assert not _proxies(lab_home)
    assert_nothing_left(lab_home)


def test_stop_start_and_a_killed_proxy(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.run("redis", RunOptions(name="c2", channels=[6379]))  # a NIC and a channel
    lab.stop("c2", timeout=5)
    assert not _proxies(lab_home)  # stopped with its guest
    lab.start("c2")
    path = str(lab.channel("c2", 6379))
    assert _roundtrip(path, b"PING\r\n") == b"+PONG\r\n"
    # A proxy killed behind uniklab's back: the guest sees its host go (once: its loop
    # does not spin on the port's POLLHUP), and the next command starts the proxy again.
    rundir = lab.channel("c2", 6379).parent
    marker = str(config_path(rundir))
    pid = daemons.find(pid_path(rundir), marker)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _until("the guest sees its host go", lambda: "host disconnected" in lab.logs("c2"))
    assert main(["ps"]) == 0
    again = daemons.find(pid_path(rundir), marker)
    assert again is not None and again != pid
    _until("the guest sees its host again", lambda: lab.logs("c2").count("host connected") == 3)
    assert _roundtrip(path, b"PING\r\n") == b"+PONG\r\n"
    assert lab.logs("c2").count("host disconnected") == 1
    # Without its config (a damaged runtime directory) a dead proxy's socket is gc's.
    config_path(rundir).unlink()
    os.kill(again, signal.SIGKILL)
    _until("the proxy is gone", lambda: not daemons.matches(again, marker))
    capsys.readouterr()
    assert main(["gc", "--dry-run", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [(i["kind"], i["name"]) for i in found] == [("socket", path)]
    assert main(["gc"]) == 0
    assert not Path(path).exists()
    lab.destroy("c2")
    assert_nothing_left(lab_home)


def test_bad_channel_requests_are_one_line_errors(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["run", "redis", "--channel", "0"], "invalid channel port"),
        (["run", "redis", "--channel", "http"], "invalid channel port"),
        (["run", "redis", "--link", "nobody"], "invalid link"),
        (["run", "redis", "--link", "nobody:6379:16379"], "nobody"),
        (["run", "redis", "--link", "nobody:6379"], "own port"),
        (["run", "redis", "--net", "none", "-p", "6379"], "--net none"),
        (["run", "redis", *[f"--channel={p}" for p in range(7000, 7017)]], "at most 16"),
        (["channel", "nobody", "6379"], "nobody"),
        (["channel", "nobody", "99999"], "invalid channel port"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) != 0, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, (argv, err)
    with pytest.raises(UsageError, match="no channel to port 6379"):
        lab.run("redis", RunOptions(name="plain", wait=False))  # no channel: fine
        lab.run("redis", RunOptions(net="none", links=["plain:6379:16379"]))
    lab.destroy("plain")
    assert_nothing_left(lab_home)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")
def test_uniklab_test_over_channels(lab_home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "lab.toml"
    spec.write_text(
        """
[[instances]]
name = "master"
image = "redis:latest"
nets = ["none"]

[[instances]]
name = "replica"
image = "redis:latest"
nets = ["none"]
links = ["master:6379:16379"]
args = ["--replicaof", "127.0.0.1", "16379"]

[[tests]]
name = "ping over the channel"
command = ["redis-cli", "-s", "${MASTER_SOCKET}", "ping"]
expect_stdout = "PONG"

[[tests]]
name = "the replica is a replica"
command = ["redis-cli", "-s", "${REPLICA_SOCKET_6379}", "role"]
expect_stdout = "slave"
"""
    )
    assert main(["test", str(spec)]) == 0
    assert_nothing_left(lab_home)


@pytest.mark.parametrize("point", ["create.before_channels", "run.after_create"])
def test_a_killed_run_leaves_no_proxy(lab_home: Path, point: str) -> None:
    """`run` killed (SIGKILL) with QEMU up, before or after its proxy started: the next
    command removes the guest, its proxy and its sockets."""
    env = {**os.environ, "UNIKLAB_HOME": str(lab_home), "UNIKLAB_CRASH_AT": point}
    argv = [sys.executable, "-m", "uniklab", "run", "redis", "--name", "v", "--net", "none"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == -9, r.stderr
    assert bool(_proxies(lab_home)) == (point == "run.after_create")
    assert main(["ps"]) == 0
    assert not _proxies(lab_home)
    assert_nothing_left(lab_home)


@pytest.mark.timeout(45 * 60)  # the kernel's build, once per machine (tests/kernel's, in a run)
def test_a_specialised_kernel_image_over_its_channel(lab: Lab, lab_home: Path) -> None:
    """The specialised kernel builds virtio_console in, so the test faces' fast images
    (and a user's specialised ones) take channels too."""
    from uniklab.kernel import build as kbuild

    assert kbuild.build("microvm").has("CONFIG_VIRTIO_CONSOLE")
    lab.bake("redis", tag="chan", kernel="specialised", root="erofs")
    view = lab.run("redis:chan", RunOptions(name="s1", net="none"))
    assert view.address == "channel:6379"
    with Client(lab_home) as client:
        r = client.get("s1").redis(via="channel")
        assert r.ping() is True and r.set("k", "v") and r.get("k") == b"v"
    lab.destroy("s1")
