"""uniklab networks as libvirt networks, on this machine's real libvirtd (root): an
isolated libvirt network (libvirt's bridge, its own dnsmasq), a Redis guest on it whose
address comes from libvirt's DHCP leases, PONG over that bridge, and nothing left after."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import Iterator

import pytest
import redis

from uniklab.cli.main import main
from uniklab.errors import ConflictError, NotFoundError
from uniklab.lab import Lab, RunOptions
from uniklab.net import libvirt_net

pytestmark = [pytest.mark.e2e, pytest.mark.root]

HOST = "lv"
NET = "uklvnet"
SUBNET = "10.79.77.0/24"  # libvirt refuses it if this machine uses it already


def _libvirt_networks(uri: str) -> list[str]:
    r = subprocess.run(
        ["virsh", "-c", uri, "net-list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _link_exists(dev: str) -> bool:
    return subprocess.run(["ip", "link", "show", dev], capture_output=True).returncode == 0


@pytest.fixture
def lv_lab(lab: Lab, libvirtd: str) -> Iterator[Lab]:
    lab.hosts.add(name=HOST, hypervisor="libvirt", libvirt=libvirtd)
    yield lab
    # A failed test leaves no network behind either (guests go with the lab fixture).
    for row in lab.store.instances():
        with contextlib.suppress(Exception):
            lab.destroy(row.name)
    with contextlib.suppress(Exception):
        libvirt_net.remove(lab, NET, HOST)


def test_redis_on_a_libvirt_network(
    lv_lab: Lab, libvirtd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    argv = ["net", "create", NET, "--libvirt", HOST, "--subnet", SUBNET, "--json"]
    assert main(argv) == 0
    made = json.loads(capsys.readouterr().out)
    bridge = made["bridge"]
    assert made["subnet"] == SUBNET and _link_exists(bridge)
    assert NET in _libvirt_networks(libvirtd)
    # The guest joins it by name; its address is libvirt's lease for its MAC.
    view = lv_lab.run(
        "redis", RunOptions(host=HOST, net=NET, memory="128M", name="lvn-redis", wait=True)
    )
    nic = view.row.attachments[0]
    assert (nic.kind, nic.net, nic.bridge) == ("host-bridge", NET, bridge)
    info = lv_lab.ip("lvn-redis")
    assert info.source == f"libvirt dhcp lease on {HOST}"
    assert ipaddress.IPv4Address(info.host) in ipaddress.IPv4Network(SUBNET)
    leases = lv_lab.backend_on(lv_lab.hosts.get(HOST))
    assert leases.lease(NET, nic.mac) == info.host  # type: ignore[attr-defined]
    # PONG over libvirt's bridge: this machine's route to the guest is that bridge.
    route = subprocess.run(
        ["ip", "-j", "route", "get", info.host], capture_output=True, text=True, check=True
    )
    assert json.loads(route.stdout)[0]["dev"] == bridge
    client = redis.Redis(host=info.host, port=6379, protocol=2, socket_timeout=10)
    assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
    assert main(["ps"]) == 0
    assert info.host in capsys.readouterr().out
    assert main(["net", "ls", "--libvirt", HOST]) == 0
    listing = capsys.readouterr().out
    assert NET in listing and "lvn-redis" in listing
    # In use: kept; the host's own network or another home's: never removed.
    with pytest.raises(ConflictError, match="in use by: lvn-redis"):
        libvirt_net.remove(lv_lab, NET, HOST)
    lv_lab.destroy("lvn-redis")
    assert main(["net", "rm", NET, "--libvirt", HOST]) == 0
    assert NET not in _libvirt_networks(libvirtd) and not _link_exists(bridge)


def test_bad_libvirt_network_requests_are_one_line(
    lv_lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, said in (
        (["net", "create", NET, "--libvirt", HOST], "a libvirt network needs --subnet"),
        (["net", "create", NET, "--libvirt", HOST, "--subnet", "10.1.0.0/30"], "between /16"),
        (["net", "create", NET, "--libvirt", "local", "--subnet", SUBNET], "not a libvirt host"),
        (["net", "rm", "nosuchnet", "--libvirt", HOST], "no libvirt network nosuchnet"),
    ):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    libvirt_net.create(lv_lab, NET, HOST, SUBNET)
    with pytest.raises(ConflictError, match="exists"):
        libvirt_net.create(lv_lab, NET, HOST, "10.79.78.0/24")
    with pytest.raises(NotFoundError, match=f"no network nosuch here nor on {HOST}"):
        lv_lab.run("redis", RunOptions(host=HOST, net=[NET, "nosuch"], wait=False))
    assert lv_lab.store.instances() == []
    libvirt_net.remove(lv_lab, NET, HOST)
