"""A managed dnsmasq serving DHCP (no DNS) on one bridge, and its lease file.

dnsmasq reports a bad option or a busy port before it daemonizes, so ``start`` either
returns a running server (pid from its pid file) or raises with dnsmasq's own words.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from uniklab.backends import process
from uniklab.errors import CommandError, UniklabError
from uniklab.executor import Executor, local
from uniklab.net import netns as ns

log = logging.getLogger(__name__)

LEASE_TIME = "1h"


@dataclass(frozen=True)
class Lease:
    expiry: int
    mac: str
    ip: str
    hostname: str | None


@dataclass(frozen=True)
class DnsmasqFiles:
    rundir: Path

    @property
    def leases(self) -> Path:
        return self.rundir / "dnsmasq.leases"

    @property
    def pidfile(self) -> Path:
        return self.rundir / "dnsmasq.pid"

    @property
    def log(self) -> Path:
        return self.rundir / "dnsmasq.log"


def dhcp_pool(subnet: ipaddress.IPv4Network) -> tuple[str, str]:
    """The upper half of the subnet's hosts; the lower half stays free for static use."""
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - 1
    start = first + max(1, (last - first) // 2)
    return str(ipaddress.IPv4Address(start)), str(ipaddress.IPv4Address(last))


def build_argv(bridge: str, subnet: ipaddress.IPv4Network, files: DnsmasqFiles) -> list[str]:
    start, end = dhcp_pool(subnet)
    return [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--port=0",  # DHCP only, no DNS server
        f"--interface={bridge}",
        "--bind-interfaces",
        "--except-interface=lo",
        f"--dhcp-range={start},{end},{subnet.netmask},{LEASE_TIME}",
        f"--dhcp-leasefile={files.leases}",
        f"--pid-file={files.pidfile}",
        f"--log-facility={files.log}",
        "--log-dhcp",
        "--dhcp-authoritative",
        # dnsmasq pings an address before offering it (up to 3 s); on a network whose
        # only clients are uniklab's guests the lease file is the truth.
        "--no-ping",
        "--user=root",
    ]


def start(
    bridge: str,
    subnet: ipaddress.IPv4Network,
    files: DnsmasqFiles,
    netns: str | None,
    executor: Executor = local,
) -> int:
    files.rundir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.leases.touch(mode=0o600)
    files.log.touch(mode=0o600)  # dnsmasq would make it 0640
    argv = ns.exec_prefix(netns) + build_argv(bridge, subnet, files)
    try:
        executor.run(argv, timeout=15)
    except CommandError as exc:
        raise UniklabError(f"dnsmasq failed to start on {bridge}: {exc}") from exc
    try:
        return int(files.pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise UniklabError("dnsmasq started but wrote no pid file") from exc


def stop(pid: int | None, files: DnsmasqFiles) -> None:
    if pid:
        process.stop(pid, str(files.rundir), grace=3.0)


def running(pid: int | None, files: DnsmasqFiles) -> bool:
    return process.matches(pid, str(files.rundir))


def parse_leases(text: str) -> list[Lease]:
    """dnsmasq's lease file: 'expiry mac ip hostname client-id' per line; '*' is unknown."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        try:
            ipaddress.IPv4Address(parts[2])
        except ValueError:
            continue
        out.append(
            Lease(int(parts[0]), parts[1].lower(), parts[2], None if parts[3] == "*" else parts[3])
        )
    return out


def lease_for(mac: str, files: DnsmasqFiles) -> Lease | None:
    try:
        text = files.leases.read_text()
    except OSError:
        return None
    found = [lease for lease in parse_leases(text) if lease.mac == mac.lower()]
    return found[-1] if found else None


def release(bridge: str, lease: Lease, netns: str | None, executor: Executor = local) -> None:
    """Tell dnsmasq the client gave its lease back (dnsmasq-utils' dhcp_release)."""
    argv = [*ns.exec_prefix(netns), "dhcp_release", bridge, lease.ip, lease.mac]
    try:
        executor.run(argv, timeout=10)
    except CommandError as exc:
        log.warning("could not release lease %s for %s: %s", lease.ip, lease.mac, exc)
