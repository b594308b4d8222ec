"""Planning a `run` before anything is made: each NIC's attachment decided (user-mode,
a tap on a uniklab network, or a bridge of the host).

Pure decisions over the store's rows; ``Lab.run`` records the plan, then makes it real.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence

from uniklab import validate
from uniklab.backends.registry import BackendType
from uniklab.errors import ConflictError, NotFoundError, UsageError
from uniklab.guest.config import Nic
from uniklab.net import attach
from uniklab.net.attach import NicRequest
from uniklab.net.attachment import Attachment
from uniklab.net.service import NetworkService, ifname
from uniklab.state.store import InstanceRow


def instance_mac(name: str, row_id: int, nic: int = 0) -> str:
    """A stable, locally administered unicast MAC (QEMU's 52:54:00 prefix) per NIC."""
    h = hashlib.sha256(f"{name}/{row_id}/{nic}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def plan_attachments(
    engine: BackendType,
    nets: Sequence[NicRequest],
    name: str,
    row_id: int,
    networks: NetworkService,
    others: list[InstanceRow],
    forwards: list[tuple[int, int]],
    host: str = "local",
    host_nets: Mapping[str, str] | None = None,
) -> list[Attachment]:
    """Each NIC of a new guest: its kind, MAC, address and device, checked against the
    other instances (a MAC or address taken on the same network is refused).
    ``host_nets``: the networks of the host's own engine (libvirt's) that ``nets`` name,
    name → bridge; a uniklab network of the same name is meant first."""
    macs = [instance_mac(name, row_id, i) for i in range(max(1, len(nets)))]
    host_nets = host_nets or {}
    on_host = [r for r in others if r.host == host]
    if engine.user_net is None:
        return host_bridges(nets, macs, on_host, host_nets)
    if nets:
        ours = {n.name for n in networks.store.networks()}
        theirs = [n for n in nets if n.network not in ours and n.network in host_nets]
        if theirs and len(theirs) != len(nets):
            unknown = [n.network for n in nets if n.network not in ours and n not in theirs]
            if unknown:
                raise NotFoundError(f"no network {unknown[0]} here nor on {host}")
            raise UsageError(
                "a guest's NICs join uniklab networks or its host's libvirt networks, not both"
            )
        if theirs:
            return host_bridges(nets, macs, on_host, host_nets)
        return attach.plan(networks, nets, row_id=row_id, default_macs=macs, instances=others)
    return [Attachment(kind="user", mac=macs[0], forwards=tuple(forwards))]


def host_bridges(
    requests: Sequence[NicRequest],
    default_macs: Sequence[str],
    others: Sequence[InstanceRow],
    host_nets: Mapping[str, str] | None = None,
) -> list[Attachment]:
    """The NICs of a guest on a host whose bridges uniklab did not make (a Xen dom0's
    xenbr0): --net names a bridge there, or a network of the host's engine (``host_nets``,
    name → bridge: libvirt's); DHCP is that LAN's, or that network's."""
    host_nets = host_nets or {}
    used = {(a.bridge, a.mac) for r in others for a in r.attachments}
    out: list[Attachment] = []
    for i, req in enumerate(requests):
        addr = None
        if req.ip:
            try:
                addr = str(ipaddress.IPv4Interface(req.ip if "/" in req.ip else f"{req.ip}/24"))
            except ValueError:
                raise UsageError(f"invalid address {req.ip!r}: use e.g. 10.0.0.20/24") from None
        gw = str(ipaddress.IPv4Address(req.gateway)) if req.gateway else None
        mac = validate.mac(req.mac) if req.mac else default_macs[i]
        net = req.network if req.network in host_nets else None
        bridge = host_nets[req.network] if net else ifname(req.network)
        if (bridge, mac) in used:
            raise ConflictError(f"MAC {mac} is already used on bridge {bridge}")
        out.append(
            Attachment(kind="host-bridge", mac=mac, bridge=bridge, net=net, addr=addr, gw=gw)
        )
    macs = [a.mac for a in out]
    if len(set(macs)) != len(macs):
        raise UsageError("two NICs of one guest have the same MAC")
    return out


def guest_nics(
    attachments: Sequence[Attachment], engine: BackendType
) -> tuple[list[Nic], list[str]]:
    """What the guest init configures for each NIC, and its DNS servers."""
    nics: list[Nic] = []
    dns: list[str] = []
    for a in attachments:
        if a.kind == "user":
            user = engine.user_net
            assert user is not None
            nics.append(
                Nic(mac=a.mac, dhcp=False, addr=f"{user.guest}/{user.prefix}", gw=user.gateway)
            )
            dns.append(user.dns)
        else:
            nics.append(Nic(mac=a.mac, dhcp=a.addr is None, addr=a.addr, gw=a.gw))
    return nics, dns
