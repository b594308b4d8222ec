"""Resources that fail under uniklab: a vanished bridge, an SSH host that stops answering, a
guest that never becomes ready, a full disk during a bake. Each is one clear error, and
nothing is left behind.

A host port already in use is ``tests/lab/test_redis_qemu.py::test_port_in_use_and_name_in_use``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tests.support.leaks import Baseline, processes_mentioning
from tests.support.sshd import SshServer
from uniklab.cli.main import main
from uniklab.errors import HostUnreachableError, ProbeTimeoutError
from uniklab.hosts.inventory import Host
from uniklab.hosts.ssh import SshExecutor
from uniklab.lab import Lab, RunOptions
from uniklab.net import links, netns
from uniklab.net.attach import NicRequest
from uniklab.net.service import NetworkSpec
from uniklab.paths import Paths

pytestmark = pytest.mark.faults


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.e2e
@pytest.mark.root
def test_bridge_vanished_under_a_running_network(
    fault_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = f"uklgone{os.getpid() % 10000}"
    base = Baseline.take(fault_home)
    lab = Lab(Paths(fault_home))
    try:
        row = lab.networks.create(NetworkSpec("gone", "10.94.0.0/24", None, ns))
        view = lab.run("redis", RunOptions(name="orphan", net=[NicRequest("gone")], wait=False))
        tap = view.row.attachments[0].tap
        assert links.link_exists(tap, ns)
        # Behind uniklab's back: the bridge goes.
        with IPRoute(netns=ns) as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=row.bridge)[0])
        capsys.readouterr()
        assert main(["net", "ls"]) == 0
        assert "broken (bridge gone)" in capsys.readouterr().out
        assert main(["destroy", "orphan"]) == 0, capsys.readouterr().err
        assert not links.link_exists(tap, ns)
        assert processes_mentioning(str(fault_home), ("qemu",)) == []
        assert main(["net", "rm", "gone"]) == 0, capsys.readouterr().err
        assert not netns.exists(ns)
        assert base.leaks() == []
    finally:
        for r in lab.store.instances():
            lab.destroy(r.name)
        for n in lab.store.networks():
            lab.networks.rm(n.name, [])
        lab.close()
        if netns.exists(ns):
            netns.remove(ns)


def _host(server: SshServer, port: int | None = None) -> Host:
    return Host(
        name="flaky",
        ssh="root@127.0.0.1",
        port=port or server.port,
        identity=str(server.identity),
        known_hosts=str(server.known_hosts),
    )


@pytest.mark.root
def test_host_stops_answering_mid_command(sshd: SshServer) -> None:
    ex = SshExecutor(_host(sshd), connect_timeout=5)
    assert ex.run(["echo", "hi"], timeout=30).stdout.strip() == "hi"
    # A command that hangs (a host gone quiet after connecting): bounded by its timeout.
    start = time.monotonic()
    with pytest.raises(HostUnreachableError, match="did not finish within 2s"):
        ex.run(["sleep", "60.4321"], timeout=2)
    assert time.monotonic() - start < 10
    # The host enforces the bound too: the remote command does not outlive it (here the
    # "remote" is this machine).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _pgrep("sleep 60.4321"):
        time.sleep(0.1)
    assert not _pgrep("sleep 60.4321")


@pytest.mark.root
def test_host_that_does_not_answer_at_all(sshd: SshServer) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = SshExecutor(_host(sshd, port), connect_timeout=3)
    start = time.monotonic()
    with pytest.raises(HostUnreachableError, match="ssh failed"):
        ex.run(["true"], timeout=20)
    assert time.monotonic() - start < 20


NEVER_READY = """\
name = "never"
binary = "/usr/bin/redis-server"
args = ["--save", "", "--port", "6379"]

[probe]
kind = "console"
marker = "this line never appears"
"""


@pytest.mark.e2e
def test_guest_that_never_becomes_ready(
    fault_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = fault_home / "never.toml"
    recipe.write_text(NEVER_READY)
    assert main(["bake", str(recipe)]) == 0
    base = Baseline.take(fault_home)
    capsys.readouterr()
    start = time.monotonic()
    code = main(["run", "never", "--name", "never", "--wait", "--timeout", "25"])
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 1
    line = _one_error_line(err)
    assert "not ready after 25s" in line and "last error" in line, line
    assert "console tail:" in err
    assert took < 25 + 30
    assert base.leaks() == []
    # The API says the same with a ProbeTimeoutError carrying the evidence.
    lab = Lab(Paths(fault_home))
    try:
        with pytest.raises(ProbeTimeoutError) as info:
            lab.run("never", RunOptions(timeout=20))
        assert info.value.last_error and info.value.console_tail
    finally:
        lab.close()
    assert base.leaks() == []


@pytest.mark.root
def test_full_disk_during_bake(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Path(f"/tmp/uklfull{os.getpid() % 10000}")
    home.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(home)], check=True
    )
    try:
        monkeypatch.setenv("UNIKLAB_HOME", str(home))
        capsys.readouterr()
        code = main(["bake", "redis"])
        err = capsys.readouterr().err
        assert code == 1, err
        # Off a terminal the bake's steps come first, a line each ("baking redis: ...").
        assert "error:" in err, err
        line = _one_error_line(err[err.index("error:") :])
        assert "No space left on device" in line, line
        assert [p.name for p in (home / "images").iterdir()] == []
        assert main(["images", "--json"]) == 0
        assert capsys.readouterr().out.strip() == "[]"
    finally:
        subprocess.run(["umount", str(home)], check=True)
        home.rmdir()


def _pgrep(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0
