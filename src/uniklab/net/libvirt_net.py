"""uniklab networks on libvirt hosts: an isolated libvirt network there (libvirt's bridge,
the host's address on it, libvirt's own dnsmasq), made, listed and removed through the
host's libvirt backend; and a guest's address on one, found by MAC: libvirt's DHCP leases
first (``virNetworkGetDHCPLeases``), then the host's neighbour table for the bridge.

The libvirt network is its own record: its ``<metadata>`` names the home that made it, so
a home removes only its own, never the host's (``default``) nor another home's.  Guests
join any active libvirt network of their host by name (``run --host H --net default``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uniklab import validate
from uniklab.backends.base import owner_tag
from uniklab.errors import ConflictError, UsageError
from uniklab.net import remote
from uniklab.net.discover import Found

if TYPE_CHECKING:
    from uniklab.backends.libvirt import LibvirtBackend
    from uniklab.executor import Executor
    from uniklab.hosts.inventory import Host
    from uniklab.lab import Lab
    from uniklab.net.attachment import Attachment


@dataclass(frozen=True)
class HostNetwork:
    name: str
    bridge: str
    mine: bool  # made by this home (else the host's own, or another home's)


def _backend(lab: Lab, host: str) -> LibvirtBackend:
    from uniklab.backends.libvirt import LibvirtBackend

    h = lab.hosts.get(host)
    if h.libvirt is None:
        raise UsageError(
            f"host {host} is not a libvirt host (uniklab host add NAME --libvirt URI)"
        )
    backend = lab.backend_on(h)
    assert isinstance(backend, LibvirtBackend)
    return backend


def create(lab: Lab, name: str, host: str, subnet: str | None) -> tuple[str, str]:
    """Network ``name`` on libvirt host ``host``: (its bridge there, its subnet)."""
    from uniklab.backends.libvirt_xml import NetworkSpec

    validate.name(name, "network name")
    if subnet is None:
        raise UsageError("a libvirt network needs --subnet, e.g. 10.78.0.0/24")
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise UsageError(f"invalid subnet {validate.short(subnet)}: {exc}") from None
    if not 16 <= net.prefixlen <= 29:
        raise UsageError(f"subnet {net} must be between /16 and /29")
    if any(n.name == name for n in lab.store.networks()):
        # `--net NAME` would mean that one: a uniklab network is looked up first.
        raise ConflictError(f"a network named {name!r} already exists on this machine")
    bridge = _backend(lab, host).create_network(NetworkSpec(name, net, owner_tag(lab.paths.run)))
    return bridge, str(net)


def named(lab: Lab, host: Host, names: Sequence[str]) -> dict[str, str]:
    """The active libvirt networks of ``host`` among ``names``: name → bridge."""
    return {n: b for n, b in _backend(lab, host.name).host_networks().items() if n in names}


def users(lab: Lab, name: str, host: str) -> list[str]:
    """The instances on ``host`` with a NIC on its libvirt network ``name``."""
    return [
        r.name
        for r in lab.store.instances()
        if r.host == host and any(a.kind == "host-bridge" and a.net == name for a in r.attachments)
    ]


def remove(lab: Lab, name: str, host: str) -> None:
    """This home's network ``name`` on ``host`` (refused while instances use it)."""
    using = users(lab, name, host)
    if using:
        raise ConflictError(f"network {name} on {host} is in use by: {', '.join(using)}")
    _backend(lab, host).remove_network(name, owner_tag(lab.paths.run))


def ls(lab: Lab, host: str) -> list[HostNetwork]:
    backend = _backend(lab, host)
    owner = owner_tag(lab.paths.run)
    return [
        HostNetwork(name, bridge, backend.network_owner(name) == owner)
        for name, bridge in sorted(backend.host_networks().items())
    ]


def finder(h: Host, ex: Executor) -> Callable[[Attachment], Found | None]:
    """One look, each time it is called, for the address of a NIC on a libvirt network of
    host ``h`` (one connection for all the looks)."""
    from uniklab.backends.libvirt import LibvirtBackend

    assert h.libvirt is not None
    backend = LibvirtBackend(h.libvirt, ex, kvm=False)

    def look(a: Attachment) -> Found | None:
        assert a.net is not None
        ip = backend.lease(a.net, a.mac)
        if ip:
            return Found(ip, f"libvirt dhcp lease on {h.name}")
        return remote.lookup(ex, a.mac, str(a.bridge), leases=())

    return look
