"""The runbook's network flow, for real, inside a network namespace the test owns:
bridge xenbr0, MAC 00:11:22:33:44:55, DHCP from uniklab's dnsmasq, the address found by
MAC, redis-cli from the namespace; static addressing; replication between two guests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uniklab.cli.main import main
from uniklab.lab import Lab, RunOptions
from uniklab.net import links, netns, timesvc
from uniklab.net.attach import NicRequest
from uniklab.net.service import NetworkSpec

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NS = f"ukltest{os.getpid() % 10000}"


def _in_ns(*argv: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", NS, *argv], capture_output=True, text=True, timeout=20, check=True
    )
    return out.stdout.strip()


def _no_network_leftovers(home: Path) -> None:
    assert not netns.exists(NS), "namespace left behind"
    dns = subprocess.run(["pgrep", "-f", f"dnsmasq.*{home}"], capture_output=True, text=True)
    assert dns.stdout == "", "dnsmasq left running"
    clock = subprocess.run(["pgrep", "-f", f"socat.*{home}"], capture_output=True, text=True)
    assert clock.stdout == "", "time service left running"


# Run inside the namespace: the best of 20 Redis TIME samples, as the distance of the
# guest's clock outside each [before, after] window (see test_redis_qemu's clock test).
CLOCK_SNIPPET = """
import sys, time, redis
r = redis.Redis(sys.argv[1], 6379, socket_timeout=5)
bounds = []
for _ in range(20):
    before = time.time(); sec, usec = r.time(); after = time.time()
    guest = sec + usec / 1e6
    bounds.append(max(0.0, guest - after, before - guest))
print(min(bounds))
"""


@pytest.fixture
def lab_net(lab: Lab, lab_home: Path) -> Lab:
    lab.networks.create(NetworkSpec("lab", "10.77.0.0/24", "xenbr0", NS))
    yield lab
    for v in lab.ps():
        lab.destroy(v.name)
    for n in lab.store.networks():
        lab.networks.rm(n.name, [])
    _no_network_leftovers(lab_home)


def test_runbook_dhcp_flow(
    lab_net: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = lab_net
    start = time.monotonic()
    assert (
        main(
            [
                "run",
                "redis",
                "--name",
                "redis",
                "--memory",
                "128M",
                "--net",
                "lab",
                "--mac",
                "00:11:22:33:44:55",
                "--wait",
            ]
        )
        == 0
    )
    ready = time.monotonic() - start
    info = lab.ip("redis")
    assert info.source == "dhcp lease"
    assert info.host.startswith("10.77.0.")
    # the runbook's check, from inside the namespace
    assert _in_ns("redis-cli", "-h", info.host, "ping") == "PONG"
    assert _in_ns("redis-cli", "-h", info.host, "set", "foo", "bar") == "OK"
    assert _in_ns("redis-cli", "-h", info.host, "get", "foo") == "bar"
    # `arp -a` in the namespace shows the MAC at that address
    neigh = _in_ns("ip", "neigh", "show", "dev", "xenbr0")
    assert f"{info.host} lladdr 00:11:22:33:44:55" in neigh
    capsys.readouterr()
    assert main(["ps"]) == 0
    assert info.host in capsys.readouterr().out
    print(f"run-to-ready with DHCP: {ready:.1f}s")
    lab.destroy("redis")
    assert links.taps("ukt", NS) == []
    lease_file = Path(lab.store.network("lab").rundir) / "dnsmasq.leases"
    deadline = time.monotonic() + 5
    while "00:11:22:33:44:55" in lease_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "00:11:22:33:44:55" not in lease_file.read_text(), "lease not released"
    assert "00:11:22:33:44:55" not in _in_ns("ip", "neigh", "show", "dev", "xenbr0")


def test_static_and_replication(lab_net: Lab) -> None:
    lab = lab_net
    lab.run("redis", RunOptions(name="primary", nets=[NicRequest("lab", ip="10.77.0.10/24")]))
    assert lab.ip("primary").source == "static"
    lab.run(
        "redis",
        RunOptions(
            name="replica",
            nets=[NicRequest("lab", ip="10.77.0.11", gateway="10.77.0.1")],
            args=["--replicaof", "10.77.0.10", "6379"],
        ),
    )
    assert _in_ns("redis-cli", "-h", "10.77.0.10", "set", "k", "from-primary") == "OK"
    deadline = time.monotonic() + 30
    got = ""
    while time.monotonic() < deadline:
        got = _in_ns("redis-cli", "-h", "10.77.0.11", "get", "k")
        if got == "from-primary":
            break
        time.sleep(0.5)
    assert got == "from-primary"


def test_network_bad_input(lab_net: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["net", "create", "lab2", "--subnet", "10.77.0.0/25", "--netns", NS], "overlaps"),
        (["net", "create", "lab", "--subnet", "10.78.0.0/24"], "already exists"),
        (["net", "create", "x", "--subnet", "10.79.0.0/33"], "invalid subnet"),
        (["net", "create", "x", "--subnet", "10.79.0.1/24"], "invalid subnet"),
        (["net", "create", "x", "--bridge", "nosuchbr0"], "give --subnet"),
        (
            ["net", "create", "x", "--subnet", "10.79.0.0/24", "--bridge", "bad name"],
            "invalid interface name",
        ),
        (["run", "redis", "--net", "nosuch"], "no such network"),
        (["run", "redis", "--net", "lab", "--mac", "zz:zz"], "invalid MAC"),
        (["run", "redis", "--net", "lab", "--mac", "01:00:5e:00:00:01"], "multicast"),
        (["run", "redis", "--net", "lab", "--ip", "10.99.0.5/24"], "outside network"),
        (["run", "redis", "--net", "lab", "--ip", "10.77.0.1"], "host's own address"),
        (["run", "redis", "--net", "lab", "--ip", "10.77.0.5", "--gateway", "10.1.1.1"], "outside"),
        (["run", "redis", "--mac", "00:11:22:33:44:55"], "go with --net"),
        (["run", "redis", "--net", "lab", "-p", "1234:6379"], "not with --net"),
    ]
    for argv, message in cases:
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
    assert [n.name for n in lab_net.store.networks()] == ["lab"]
    assert lab_net.store.instances() == []
    assert links.taps("ukt", NS) == []


def test_duplicate_mac_and_rm_in_use(lab_net: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = lab_net
    lab.run(
        "redis", RunOptions(name="a", wait=False, nets=[NicRequest("lab", mac="00:11:22:33:44:55")])
    )
    assert main(["run", "redis", "--name", "b", "--net", "lab", "--mac", "00:11:22:33:44:55"]) == 4
    assert "already used on network lab" in capsys.readouterr().err
    assert main(["net", "rm", "lab"]) == 4
    assert "in use by: a" in capsys.readouterr().err
    assert [v.name for v in lab.ps()] == ["a"]


def test_rumprun_command_lines(lab_net: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """The runbook's exact line: refused on a machine without Xen; the qemu form runs."""
    runbook = [
        "rumprun",
        "xen",
        "-N",
        "redis",
        "-I",
        "xen0,xenif,mac=00:11:22:33:44:55,bridge=xenbr0",
        "-W",
        "xen0,inet,dhcp",
        "-d",
        "redis",
    ]
    assert main(runbook) == 3
    assert "no Xen here" in capsys.readouterr().err
    qemu = [
        "rumprun",
        "qemu",
        "-N",
        "redis",
        "-M",
        "128",
        "-I",
        "xen0,vioif,mac=00:11:22:33:44:55,bridge=xenbr0",
        "-W",
        "xen0,inet,dhcp",
        "redis",
    ]
    assert main(qemu) == 0
    assert capsys.readouterr().out.startswith("qemu:")
    lab_net.wait_ready(lab_net.get("redis"), lab_net.image("redis"), timeout=120)
    info = lab_net.ip("redis")
    assert info.source in ("dhcp lease", "neighbour table")
    assert _in_ns("redis-cli", "-h", info.host, "ping") == "PONG"


def test_bridged_guest_reads_the_host_clock(lab_net: Lab) -> None:
    """The network's time service (socat on the gateway, port 37) sets a bridged guest's
    clock as QEMU's guestfwd does on user-mode networking: within 50 ms, not the RTC's
    whole seconds."""
    lab = lab_net
    lab.run("redis", RunOptions(name="tick", nets=[NicRequest("lab")]))
    assert "clock set from host 10.77.0.1:37" in lab.logs("tick")
    host = lab.ip("tick").host
    err = float(_in_ns(sys.executable, "-c", CLOCK_SNIPPET, host))
    assert err < 0.050, f"guest clock off by at least {err * 1000:.1f} ms"
    # A time service that died is restarted by the next command.
    files = timesvc.TimeFiles(Path(lab.store.network("lab").rundir))
    pid = timesvc.pid_of(files)
    assert pid and timesvc.running(files)
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while timesvc.running(files) and time.monotonic() < deadline:
        time.sleep(0.05)  # the signal is sent; the process is gone a moment later
    lab.ps()
    again = timesvc.pid_of(files)
    assert again != pid and timesvc.running(files)
