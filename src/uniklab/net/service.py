"""Managed networks: a bridge (optionally in its own namespace) with a DHCP server and a
time service for its guests (``timesvc``).

``create`` records its intent in the state store before each step, so a command killed
half-way leaves a row that the next command's ``reconcile`` tears down; ``rm`` undoes
exactly what uniklab made (an existing bridge, such as a real xenbr0, is left alone).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from uniklab import faults, validate
from uniklab.errors import ConflictError, UsageError
from uniklab.net import dnsmasq, links, netns, timesvc
from uniklab.state.store import NetworkRow, Store

log = logging.getLogger(__name__)

CREATING, READY = "creating", "ready"
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    subnet: str | None = None
    bridge: str | None = None
    netns: str | None = None
    dhcp: bool = True
    lease_time: str | None = None  # dnsmasq's form ("2m", "1h"); None: dnsmasq.LEASE_TIME


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(
            f"{what} needs root (CAP_NET_ADMIN); without root use the default user-mode "
            "network (-p HOST:GUEST)"
        )


def ifname(value: str) -> str:
    if not IFNAME_RE.match(value):
        raise UsageError(f"invalid interface name {value!r}: 1-15 of A-Z a-z 0-9 _ . -")
    return value


def short_hash(text: str, n: int = 4) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _host_networks(ns: str | None) -> list[ipaddress.IPv4Network]:
    """IPv4 networks already configured on the namespace's interfaces."""
    if ns and not netns.exists(ns):
        return []
    return links.ipv4_networks(ns)


class NetworkService:
    def __init__(self, store: Store, rundir: Path) -> None:
        self.store = store
        self.rundir = rundir

    # -- create / rm ------------------------------------------------------------------
    def _validate(self, spec: NetworkSpec) -> tuple[str, ipaddress.IPv4Network | None]:
        validate.name(spec.name, "network name")
        if spec.netns is not None:
            validate.name(spec.netns, "namespace name")
        bridge = (
            ifname(spec.bridge)
            if spec.bridge is not None
            else f"ukb{short_hash(str(self.rundir))}-{spec.name}"[:15]
        )
        if spec.lease_time is not None:
            try:
                dnsmasq.lease_seconds(spec.lease_time)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        subnet = None
        if spec.subnet is not None:
            try:
                subnet = ipaddress.IPv4Network(spec.subnet, strict=True)
            except ValueError as exc:
                raise UsageError(f"invalid subnet {spec.subnet!r}: {exc}") from None
            if subnet.prefixlen > 29 or subnet.prefixlen < 16:
                raise UsageError(f"subnet {subnet} must be between /16 and /29")
        for other in self.store.networks():
            if other.name == spec.name:
                raise ConflictError(f"a network named {spec.name!r} already exists")
            if other.netns == spec.netns and other.bridge == bridge:
                raise ConflictError(f"bridge {bridge} is already network {other.name!r}")
            if (
                subnet
                and other.subnet
                and other.netns == spec.netns
                and subnet.overlaps(ipaddress.IPv4Network(other.subnet))
            ):
                raise ConflictError(
                    f"subnet {subnet} overlaps network {other.name!r} ({other.subnet})"
                )
        return bridge, subnet

    def create(self, spec: NetworkSpec) -> NetworkRow:
        require_root("a bridged network")
        bridge, subnet = self._validate(spec)
        ns_exists = netns.exists(spec.netns) if spec.netns else True
        existing = ns_exists and links.link_exists(bridge, spec.netns)
        if existing and not links.is_bridge(bridge, spec.netns):
            raise ConflictError(f"{bridge} exists and is not a bridge")
        if not existing and subnet is None:
            raise UsageError(f"bridge {bridge} does not exist: give --subnet to create it")
        if spec.lease_time is not None and (existing or not spec.dhcp):
            raise UsageError("a lease time is for a network whose DHCP server uniklab runs")
        if subnet and not existing:
            for net in _host_networks(spec.netns):
                if subnet.overlaps(net):
                    raise ConflictError(f"subnet {subnet} overlaps {net}, already on this host")
        rundir = self.rundir / spec.name
        row = NetworkRow(
            name=spec.name,
            state=CREATING,
            owner_pid=os.getpid(),
            subnet=str(subnet) if subnet else None,
            gateway=str(next(subnet.hosts())) if subnet and not existing else None,
            bridge=bridge,
            netns=spec.netns,
            dhcp=spec.dhcp and not existing,
            made_bridge=False,
            made_netns=False,
            dnsmasq_pid=None,
            rundir=str(rundir),
            created=time.time(),
        )
        self.store.reserve_network(row)
        try:
            if spec.netns and not ns_exists:
                self.store.update_network(spec.name, made_netns=1)
                netns.create(spec.netns)
                faults.point("net.after_netns")
            if not existing:
                assert subnet is not None
                self.store.update_network(spec.name, made_bridge=1)
                gw = ipaddress.IPv4Interface(f"{row.gateway}/{subnet.prefixlen}")
                links.create_bridge(bridge, gw, spec.netns)
                faults.point("net.after_bridge")
            if row.dhcp:
                assert subnet is not None
                pid = dnsmasq.start(
                    bridge,
                    subnet,
                    dnsmasq.DnsmasqFiles(rundir),
                    spec.netns,
                    spec.lease_time or dnsmasq.LEASE_TIME,
                )
                self.store.update_network(spec.name, dnsmasq_pid=pid)
                faults.point("net.after_dnsmasq")
                assert row.gateway is not None
                timesvc.start(row.gateway, timesvc.TimeFiles(rundir), spec.netns)
            self.store.update_network(spec.name, state=READY, owner_pid=None)
        except BaseException:
            self._teardown(self.store.network(spec.name))
            raise
        return self.store.network(spec.name)

    def _teardown(self, row: NetworkRow) -> None:
        dnsmasq.stop(row.dnsmasq_pid, dnsmasq.DnsmasqFiles(Path(row.rundir)))
        timesvc.stop(None, timesvc.TimeFiles(Path(row.rundir)))
        if row.made_bridge and (not row.netns or netns.exists(row.netns)):
            links.delete_link(row.bridge, row.netns)
        if row.made_netns and row.netns:
            netns.remove(row.netns)
        shutil.rmtree(row.rundir, ignore_errors=True)
        self.store.delete_network(row.name)

    def rm(self, name: str, users: list[str]) -> NetworkRow:
        row = self.store.network(name)
        if users:
            raise ConflictError(f"network {name} is in use by: {', '.join(users)}")
        self._teardown(row)
        return row

    # -- reconcile --------------------------------------------------------------------
    def reconcile(self) -> None:
        for row in self.store.networks():
            if row.state == CREATING:
                owner = row.owner_pid
                if owner != os.getpid() and not (owner and Path(f"/proc/{owner}").exists()):
                    log.info("cleaning up network %s, left half-created", row.name)
                    self._teardown(row)
            elif row.dhcp and os.geteuid() == 0:
                files = dnsmasq.DnsmasqFiles(Path(row.rundir))
                if not dnsmasq.running(row.dnsmasq_pid, files) and self.bridge_ok(row):
                    log.warning("dnsmasq of network %s had died: restarting it", row.name)
                    assert row.subnet is not None
                    pid = dnsmasq.start(
                        row.bridge,
                        ipaddress.IPv4Network(row.subnet),
                        files,
                        row.netns,
                        dnsmasq.saved_lease_time(files),
                    )
                    self.store.update_network(row.name, dnsmasq_pid=pid)
                clock = timesvc.TimeFiles(Path(row.rundir))
                died = timesvc.pid_of(clock) is not None and not timesvc.running(clock)
                if row.gateway and died and self.bridge_ok(row):
                    log.warning("time service of network %s had died: restarting it", row.name)
                    timesvc.start(row.gateway, clock, row.netns)

    def time_source(self, name: str) -> str | None:
        """Where guests of network ``name`` read the host's clock ("IP:PORT"), if it runs."""
        row = self.store.network(name)
        if row.gateway and timesvc.running(timesvc.TimeFiles(Path(row.rundir))):
            return f"{row.gateway}:{timesvc.PORT}"
        return None

    @staticmethod
    def bridge_ok(row: NetworkRow) -> bool:
        if row.netns and not netns.exists(row.netns):
            return False
        return links.link_exists(row.bridge, row.netns)

    def status(self, row: NetworkRow) -> str:
        if row.state != READY:
            return row.state
        if not self.bridge_ok(row):
            return "broken (bridge gone)"
        if row.dhcp and not dnsmasq.running(
            row.dnsmasq_pid, dnsmasq.DnsmasqFiles(Path(row.rundir))
        ):
            return "degraded (dnsmasq down)"
        return "ready"
