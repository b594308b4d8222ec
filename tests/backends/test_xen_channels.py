"""Channels on Xen (issue 18) on the virtual Xen host: Redis in a PV domU with no NIC at
all, reached from this machine over a vchan (guest: uniklab-vchan; dom0:
uniklab-vchan --listen; here: an ssh streamlocal forward) at ``<rundir>/chan-6379.sock``;
PING/SET/GET; ``destroy`` leaves no proxy in the dom0, no forward and no socket here; the
parts of an instance the store forgot are what ``owned`` reports, and ``remove`` ends them;
Redis replication between two such domUs over a vchan link (no dom0 hop).

The lab boots once for the module (the slow part under TCG); each test leaves it empty."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.xen_channels import channel_spec
from tests.support.xenlab import emptied_after, virtual_xen_home
from uniklab import daemons
from uniklab.api import Client
from uniklab.backends import xen, xen_channels
from uniklab.backends.base import Handle, InstanceSpec
from uniklab.channels import ChannelSpec, socket_path
from uniklab.cli.main import main
from uniklab.errors import LaunchError, UsageError
from uniklab.executor import Executor
from uniklab.guest.config import CMDLINE_KEY, GuestConfig
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

pytestmark = [pytest.mark.e2e, pytest.mark.root]

XEN_LAB = "xenlab-chan"
PORT = 6379
READY_TIMEOUT = 300.0  # a PV domU booting under TCG, nested, on a loaded machine


@pytest.fixture(scope="module")
def xen_home(image_home: Path) -> Iterator[Path]:
    with virtual_xen_home(image_home, XEN_LAB) as path:
        yield path


@pytest.fixture
def lab(xen_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("UNIKLAB_HOME", str(xen_home))
    with emptied_after(xen_home):
        lab = Lab(Paths(xen_home))
        try:
            yield lab
        finally:
            lab.close()


@pytest.fixture
def dom0(lab: Lab) -> Executor:
    return lab.hosts.executor(lab.hosts.get(XEN_LAB))


def _spec(lab: Lab, name: str) -> InstanceSpec:
    """The Redis image as a Xen guest with no NIC and a channel to its port."""
    return channel_spec(lab, name, [ChannelSpec(PORT)])


def _redis(sock: Path, timeout: float, evidence: Callable[[], str] = str) -> redis.Redis:
    """A client once PING answers over ``sock`` (the guest boots meanwhile); on timeout
    the error carries ``evidence()`` (the console's tail)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=10)
        try:
            if client.ping():
                return client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            last = exc
        client.close()
        time.sleep(1)
    forward = (sock.parent / "vchan-forward.log").read_text(errors="replace")[-500:]
    raise AssertionError(
        f"no PONG over {sock} within {timeout:.0f}s: {last}\n"
        f"forward log: {forward}\nconsole: {evidence()[-1500:]}"
    )


def _until(what: str, ok: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def _proxies(dom0: Executor) -> list[str]:
    return [sock for _, sock in xen_channels.list_proxies(dom0, f"{xen_channels.DOM0_ROOT}/")]


def _forwards(rundir: Path) -> list[tuple[int, str]]:
    return daemons.scan("ssh", "StreamLocalBindUnlink=yes", f"{rundir}/")


@contextlib.contextmanager
def _guest(backend: xen.XenBackend, spec: InstanceSpec) -> Iterator[Handle]:
    handle = backend.create(spec)
    try:
        yield handle
    finally:
        backend.destroy(handle)


def test_redis_over_vchan_without_a_nic(
    lab: Lab, dom0: Executor, xen_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same API as on QEMU: ``run --net none`` on the Xen host is ready once the redis
    probe passed over the channel; the CLI, the Client and plain sockets reach it."""
    view = lab.run("redis", RunOptions(name="vch", host=XEN_LAB, net="none", memory="128M"))
    assert view.row.attachments == [] and view.address == "channel:6379"
    cfg = dom0.run(["cat", str(xen.cfg_path("vch"))]).stdout
    assert "mac=" not in cfg, cfg  # no NIC at all
    # The guest config names no channel: uniklab-vchan serves them, not the init's
    # virtio-serial helper.
    word = next(w for w in cfg.replace('"', " ").split() if w.startswith(f"{CMDLINE_KEY}="))
    assert GuestConfig.decode(word).channels == []
    capsys.readouterr()
    assert main(["channel", "vch", str(PORT)]) == 0
    path = capsys.readouterr().out.strip()
    sock = lab.channel("vch", PORT)
    assert path == str(sock) and sock.is_socket()
    with Client(xen_home) as client:
        r = client.get("vch").redis(via="channel")
        assert r.set("k", "v" * 100_000)
        assert r.get("k") == b"v" * 100_000
        r.close()
    # One connection after another, each its own vchan.
    for i in range(3):
        c = redis.Redis(unix_socket_path=str(sock), socket_timeout=10)
        assert c.incr("n") == i + 1
        c.close()
    # A client that hangs up before its reply is back (100 KB: still on its way) leaves
    # nothing for the next one: each connection opens a vchan the guest served anew, not
    # the one before, which the guest may still be closing (uniklab-vchan's generations).
    for i in range(5):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(b"GET k\r\n")
        c = redis.Redis(unix_socket_path=str(sock), socket_timeout=10)
        assert c.incr("m") == i + 1
        c.close()
    assert lab.check("vch", timeout=30).ok
    # A forward killed behind uniklab's back is started again by the next command that
    # reconciles the instance (ps), as QEMU's channel proxy is.
    ((killed, _),) = _forwards(sock.parent)
    os.kill(killed, signal.SIGKILL)
    _until("the killed forward is gone", lambda: not _forwards(sock.parent))
    lab.ps()
    assert [pid for pid, _ in _forwards(sock.parent)] not in ([], [killed])
    c = redis.Redis(unix_socket_path=str(sock), socket_timeout=10)
    assert c.get("n") == b"3"
    c.close()
    assert _proxies(dom0), "no channel proxy in the dom0"
    assert _forwards(sock.parent), "no forward here"
    assert "uniklab-vchan: port 6379: vchan for domain 0" in lab.logs("vch")
    rundir = sock.parent
    lab.destroy("vch")
    assert _proxies(dom0) == []
    assert _forwards(rundir) == []
    assert not sock.exists()
    left = dom0.run(["ls", "-R", str(xen_channels.DOM0_ROOT)], check=False).stdout
    assert "vch" not in left, left
    assert "vch" not in dom0.run(["xl", "list"]).stdout


def test_gc_finds_a_forgotten_instances_channels(lab: Lab, dom0: Executor) -> None:
    backend = xen.XenBackend(dom0)
    spec = _spec(lab, "lost")
    backend.create(spec)  # its handle forgotten, as by a CLI killed after create
    mine = backend.owned(lab.paths.run)
    kinds = sorted(o.kind for o in mine if o.key == "lost")
    assert kinds == ["domain", "vchan-forward", "vchan-proxy"], mine
    for item in sorted(mine, key=lambda o: o.kind != "domain"):
        backend.remove(item)
    assert backend.owned(lab.paths.run) == []
    assert _proxies(dom0) == []
    assert _forwards(spec.rundir) == []


def test_redis_replication_guest_to_guest_over_vchan(lab: Lab, dom0: Executor) -> None:
    """A replica syncing from its master, neither with a NIC: the replica's link
    (``--link master:6379:16379``: 127.0.0.1:16379 in it) is a vchan the master's domain
    serves it directly; the master's death is the replica's EOF."""
    opts = RunOptions(host=XEN_LAB, net="none", memory="128M")
    lab.run("redis", dataclasses.replace(opts, name="master"))
    replica = dataclasses.replace(
        opts,
        name="replica",
        links=["master:6379:16379"],
        args=["--replicaof", "127.0.0.1", "16379"],
    )
    lab.run("redis", replica)
    m = redis.Redis(unix_socket_path=str(lab.channel("master", PORT)), socket_timeout=30)
    r = redis.Redis(unix_socket_path=str(lab.channel("replica", PORT)), socket_timeout=30)
    assert m.set("greeting", "over shared memory")
    m.close()
    _until("the replica has the master's key", lambda: r.get("greeting") is not None)
    info = r.info("replication")
    assert r.get("greeting") == b"over shared memory", info
    assert info["role"] == "slave" and info["master_link_status"] == "up", info
    assert "link 127.0.0.1:16379: domain" in lab.logs("replica")
    # Only the host channels have dom0 proxies: the link has none.
    assert sorted(p.split("/")[-2] for p in _proxies(dom0)) == ["master", "replica"]
    lab.destroy("master")
    _until(
        "the replica notices its master is gone",
        lambda: r.info("replication")["master_link_status"] == "down",
    )
    r.close()
    lab.destroy("replica")
    assert _proxies(dom0) == []


def test_a_xen_guest_links_only_to_guests_of_its_host(lab: Lab, dom0: Executor) -> None:
    lab.run("redis", RunOptions(name="here", channels=[PORT], wait=False))  # QEMU, here
    opts = RunOptions(name="x1", host=XEN_LAB, net="none", links=["here:6379:16379"])
    with pytest.raises(UsageError, match="links to guests of its own host"):
        lab.run("redis", opts)
    assert [v.row.name for v in lab.ps()] == ["here"]
    assert "x1" not in dom0.run(["xl", "list"]).stdout


def test_a_link_to_a_missing_domain_is_one_line(lab: Lab, dom0: Executor) -> None:

    backend = xen.XenBackend(dom0)
    gone = str(socket_path(lab.paths.run / "nobody", PORT))
    spec = channel_spec(lab, "linked", [ChannelSpec(16379, "out", gone)])
    with pytest.raises(LaunchError, match="link to nobody: no such domain"):
        backend.create(spec)
    assert "linked" not in dom0.run(["xl", "list"]).stdout
