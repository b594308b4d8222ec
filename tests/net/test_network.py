"""The runbook's network flow, for real, inside a network namespace the test owns:
bridge xenbr0, MAC 00:11:22:33:44:55, DHCP from uniklab's dnsmasq, the address found by
MAC, redis-cli from the namespace; static addressing; replication between two guests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uniklab.cli.main import main
from uniklab.errors import UsageError
from uniklab.lab import Lab, RunOptions
from uniklab.net import dnsmasq, links, netns, timesvc
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


def _with_network(lab: Lab, lab_home: Path, spec: NetworkSpec) -> Iterator[Lab]:
    """``lab`` with network ``spec`` for the test; instances and networks gone after it."""
    lab.networks.create(spec)
    yield lab
    for v in lab.ps():
        lab.destroy(v.name)
    for n in lab.store.networks():
        lab.networks.rm(n.name, [])
    _no_network_leftovers(lab_home)


@pytest.fixture
def lab_net(lab: Lab, lab_home: Path) -> Iterator[Lab]:
    yield from _with_network(lab, lab_home, NetworkSpec("lab", "10.77.0.0/24", "xenbr0", NS))


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
    lab.run("redis", RunOptions(name="primary", net=[NicRequest("lab", ip="10.77.0.10/24")]))
    assert lab.ip("primary").source == "static"
    lab.run(
        "redis",
        RunOptions(
            name="replica",
            net=[NicRequest("lab", ip="10.77.0.11", gateway="10.77.0.1")],
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
        "redis", RunOptions(name="a", wait=False, net=[NicRequest("lab", mac="00:11:22:33:44:55")])
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
    lab.run("redis", RunOptions(name="tick", net=[NicRequest("lab")]))
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


# Two MACs that differ only in the top bit of the last byte: dnsmasq hashes both to the same
# place in a 128-address pool (see _dnsmasq_slot), so it offers the second guest the first
# one's address as soon as that is free.
KEEPER_MAC, LATE_MAC = "52:54:00:1e:a5:01", "52:54:00:1e:a5:81"


def _dnsmasq_slot(mac: str, pool: int) -> int:
    """Where dnsmasq starts looking for a new client's address: the SDBM hash of its MAC
    modulo the pool's size (dnsmasq's address_allocate)."""
    j = 0
    for byte in bytes.fromhex(mac.replace(":", "")):
        j = (byte + (j << 6) + (j << 16) - j) & 0xFFFFFFFF
    return (j or 1) % pool


@pytest.fixture
def short_net(lab: Lab, lab_home: Path) -> Iterator[Lab]:
    spec = NetworkSpec("short", "10.77.0.0/24", "xenbr0", NS, lease_time="2m")
    yield from _with_network(lab, lab_home, spec)


def test_lease_time_bad_input(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    for value, message in [("1m", "out of range"), ("soon", "invalid lease time")]:
        argv = ["net", "create", "x", "--subnet", "10.79.0.0/24", "--lease-time", value]
        assert main(argv) != 0, value
        assert message in capsys.readouterr().err, value
    with pytest.raises(UsageError, match="whose DHCP server uniklab runs"):
        lab.networks.create(NetworkSpec("x", "10.79.0.0/24", None, NS, dhcp=False, lease_time="2m"))
    assert lab.store.networks() == [] and not netns.exists(NS)


@pytest.mark.timeout(600)
def test_a_guest_outlives_its_lease(short_net: Lab) -> None:
    """2-minute leases: the guest renews (RFC 2131, in the init) and keeps its address past
    the first lease's end, and a guest started after that end does not get the address,
    although dnsmasq would offer it first."""
    lab = short_net
    files = dnsmasq.DnsmasqFiles(Path(lab.store.network("short").rundir))
    t0 = time.time()
    timeline: list[tuple[float, str]] = []

    def mark(what: str) -> None:
        timeline.append((time.time() - t0, what))

    lab.run("redis", RunOptions(name="keeper", net=[NicRequest("short", mac=KEEPER_MAC)]))
    keeper = lab.ip("keeper").host
    first = dnsmasq.lease_for(KEEPER_MAC, files)
    assert first is not None and first.ip == keeper
    mark(f"keeper ready at {keeper}, lease ends at +{first.expiry - t0:.1f}s")
    # The hash model holds: the keeper got the first address dnsmasq looks at.
    assert keeper == f"10.77.0.{127 + _dnsmasq_slot(KEEPER_MAC, 128)}"
    assert _dnsmasq_slot(LATE_MAC, 128) == _dnsmasq_slot(KEEPER_MAC, 128)

    expiry = first.expiry
    while time.time() < first.expiry + 5:
        lease = dnsmasq.lease_for(KEEPER_MAC, files)
        if lease is not None and lease.expiry != expiry:
            expiry = lease.expiry
            mark(f"lease file: {lease.ip} renewed, ends at +{expiry - t0:.1f}s")
        time.sleep(1)
    mark("the first lease's end has passed")

    lab.run("redis", RunOptions(name="late", net=[NicRequest("short", mac=LATE_MAC)]))
    late = lab.ip("late").host
    mark(f"late guest ready at {late}")
    assert late != keeper, "the second guest was given the first one's address"
    assert _in_ns("redis-cli", "-h", keeper, "ping") == "PONG"
    assert _in_ns("redis-cli", "-h", late, "ping") == "PONG"
    mark(f"PONG from keeper ({keeper}) and late guest ({late})")

    lease = dnsmasq.lease_for(KEEPER_MAC, files)
    assert lease is not None and lease.ip == keeper
    assert lease.expiry > first.expiry and lease.expiry > time.time(), (lease, first)
    logs = lab.logs("keeper")
    assert f"uniklab-init: net eth0 lease {keeper} renewed for 120 s" in logs
    assert "address removed" not in logs

    lab.destroy("keeper")
    lab.destroy("late")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        dnsmasq.lease_for(mac, files) for mac in (KEEPER_MAC, LATE_MAC)
    ):
        time.sleep(0.1)
    assert dnsmasq.lease_for(KEEPER_MAC, files) is None, "renewed lease not released"
    assert dnsmasq.lease_for(LATE_MAC, files) is None, "lease not released"
    mark("both destroyed, leases released")
    print("\nlease timeline (2-minute leases):")
    for at, what in timeline:
        print(f"  +{at:6.1f}s  {what}")
