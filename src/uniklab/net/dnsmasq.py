"""A managed dnsmasq serving DHCP (no DNS) on one bridge, and its lease file.

dnsmasq reports a bad option or a busy port before it daemonizes, so ``start`` either
returns a running server (pid from its pid file) or raises with dnsmasq's own words.
Guests renew their leases (the guest init, RFC 2131), so the lease time only bounds how
long the address of a guest that vanished without ``destroy`` stays taken.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from uniklab import daemons
from uniklab.errors import CommandError, UniklabError
from uniklab.executor import Executor, local
from uniklab.net import netns as ns

log = logging.getLogger(__name__)

LEASE_TIME = "1h"
MIN_LEASE_SECONDS = 120  # dnsmasq silently raises a shorter lease to 2 minutes
_LEASE_RE = re.compile(r"^([0-9]{1,10})([smhdw]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def lease_seconds(text: str) -> int | None:
    """Seconds in a dnsmasq lease time ("2m", "1h", "90s", "3600"; None for "infinite").

    Raises ValueError for what dnsmasq would not take as written."""
    if text == "infinite":
        return None
    m = _LEASE_RE.match(text)
    if not m:
        raise ValueError(f"invalid lease time {text!r}: a number with s, m, h, d or w, or infinite")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if not MIN_LEASE_SECONDS <= seconds < 2**31:
        raise ValueError(f"lease time {text!r} out of range: dnsmasq takes 2m to 68 years")
    return seconds


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

    @property
    def lease_time(self) -> Path:
        """The network's lease time, kept for restarting a dnsmasq that died."""
        return self.rundir / "dhcp-lease-time"


def saved_lease_time(files: DnsmasqFiles) -> str:
    try:
        text = files.lease_time.read_text().strip()
        lease_seconds(text)
    except (OSError, ValueError):
        return LEASE_TIME
    return text


def dhcp_pool(subnet: ipaddress.IPv4Network) -> tuple[str, str]:
    """The upper half of the subnet's hosts; the lower half stays free for static use."""
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - 1
    start = first + max(1, (last - first) // 2)
    return str(ipaddress.IPv4Address(start)), str(ipaddress.IPv4Address(last))


def build_argv(
    bridge: str,
    subnet: ipaddress.IPv4Network,
    files: DnsmasqFiles,
    lease_time: str = LEASE_TIME,
) -> list[str]:
    start, end = dhcp_pool(subnet)
    return [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--port=0",  # DHCP only, no DNS server
        f"--interface={bridge}",
        "--bind-interfaces",
        "--except-interface=lo",
        f"--dhcp-range={start},{end},{subnet.netmask},{lease_time}",
        f"--dhcp-leasefile={files.leases}",
        f"--pid-file={files.pidfile}",
        f"--log-facility={files.log}",
        "--quiet-dhcp",
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
    lease_time: str = LEASE_TIME,
    executor: Executor = local,
) -> int:
    lease_seconds(lease_time)
    files.rundir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.leases.touch(mode=0o600)
    files.log.touch(mode=0o600)  # dnsmasq would make it 0640
    files.lease_time.write_text(lease_time + "\n")
    argv = ns.exec_prefix(netns) + build_argv(bridge, subnet, files, lease_time)
    try:
        return daemons.start(argv, files.pidfile, name="dnsmasq", timeout=15, executor=executor)
    except CommandError as exc:
        raise UniklabError(f"dnsmasq failed to start on {bridge}: {exc}") from exc


def stop(pid: int | None, files: DnsmasqFiles) -> None:
    """Stop the network's dnsmasq: ``pid`` as recorded, else its pid file's."""
    daemons.stop(pid or daemons.read_pid(files.pidfile), str(files.rundir), grace=3.0)


def running(pid: int | None, files: DnsmasqFiles) -> bool:
    return daemons.matches(pid, str(files.rundir))


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
