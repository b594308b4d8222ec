"""Finding a guest's address by its MAC, as the runbook does with `arp -a`.

First the DHCP lease (when uniklab's dnsmasq serves the network), then the neighbour
table of the bridge's namespace.  When the table is cold, a nudge (one UDP datagram to
the discard port of each address of the network's own subnet, nowhere else) makes the
kernel ARP for them, so the guest's entry appears.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from uniklab.errors import NotFoundError
from uniklab.net import dnsmasq, links, netns
from uniklab.state.store import NetworkRow

MAX_SWEEP = 1024


@dataclass(frozen=True)
class Found:
    ip: str
    source: str  # "dhcp lease" | "neighbour table" | "static"


def nudge(subnet: ipaddress.IPv4Network, ns: str | None, skip: str | None = None) -> int:
    """Send one datagram to each host of ``subnet`` (bounded); returns how many."""
    hosts = [str(h) for h in subnet.hosts() if str(h) != skip][:MAX_SWEEP]
    with netns.inside(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for h in hosts:
            with contextlib.suppress(OSError):
                s.sendto(b"\0", (h, 9))
    return len(hosts)


def lookup(mac: str, net: NetworkRow) -> Found | None:
    """One look, no waiting: lease first, then the neighbour table."""
    if net.dhcp:
        lease = dnsmasq.lease_for(mac, dnsmasq.DnsmasqFiles(Path(net.rundir)))
        if lease:
            return Found(lease.ip, "dhcp lease")
    ip = links.neighbours(net.bridge, net.netns).get(mac.lower())
    if ip:
        return Found(ip, "neighbour table")
    return None


def find(mac: str, net: NetworkRow, *, timeout: float, interval: float = 0.25) -> Found:
    deadline = time.monotonic() + timeout
    nudged_at = 0.0
    while True:
        found = lookup(mac, net)
        if found:
            return found
        now = time.monotonic()
        if net.subnet and now - nudged_at > 2.0:
            nudge(ipaddress.IPv4Network(net.subnet), net.netns, skip=net.gateway)
            nudged_at = now
        if now >= deadline:
            raise NotFoundError(
                f"no address for MAC {mac} on network {net.name} after {timeout:.0f}s "
                "(no DHCP lease, not in the neighbour table)"
            )
        time.sleep(interval)
