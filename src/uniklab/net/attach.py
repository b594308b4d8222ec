"""Attaching an instance to managed networks: one tap per NIC, MAC and address checks.

A plan is made (and validated) before anything is created; it is stored in the instance's
row first, so whatever is created from it can be removed after a crash.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uniklab import validate
from uniklab.errors import ConflictError, UsageError
from uniklab.net import dnsmasq, links
from uniklab.net.attachment import Attachment
from uniklab.net.service import READY, NetworkService, require_root, short_hash
from uniklab.state.store import InstanceRow, NetworkRow


@dataclass(frozen=True)
class NicRequest:
    """What the user asked for: a network, and optionally a MAC and a static address."""

    network: str
    mac: str | None = None
    ip: str | None = None  # CIDR or bare address (the network's prefix is then used)
    gateway: str | None = None


def parse_net_option(value: str) -> NicRequest:
    """'lab' or 'lab,mac=00:11:22:33:44:55,ip=10.77.0.20/24,gw=10.77.0.1'."""
    name, *opts = value.split(",")
    kv: dict[str, str] = {}
    for opt in opts:
        key, sep, val = opt.partition("=")
        if not sep or key not in ("mac", "ip", "gw"):
            raise UsageError(f"invalid --net option {validate.short(opt)}: use mac=, ip= or gw=")
        kv[key] = val
    return check_request(NicRequest(name, kv.get("mac"), kv.get("ip"), kv.get("gw")))


def check_request(req: object) -> NicRequest:
    """The syntax of a NIC request (name, MAC, address, gateway), before anything is looked up."""
    if not isinstance(req, NicRequest):
        raise UsageError(f"invalid NIC request {validate.short(req)}: a NicRequest or NET[,...]")
    validate.name(req.network, "network name")
    if req.mac is not None:
        validate.mac(req.mac)
    if req.ip is not None:
        try:
            if "/" in req.ip:
                ipaddress.IPv4Interface(req.ip)
            else:
                ipaddress.IPv4Address(req.ip)
        except ValueError:
            raise UsageError(
                f"invalid address {validate.short(req.ip)}: use e.g. 10.77.0.20/24"
            ) from None
    if req.gateway is not None:
        try:
            ipaddress.IPv4Address(req.gateway)
        except ValueError:
            raise UsageError(f"invalid gateway {validate.short(req.gateway)}") from None
    return req


def _static(req: NicRequest, net: NetworkRow) -> tuple[str | None, str | None]:
    if req.ip is None:
        if req.gateway:
            raise UsageError("--gateway needs --ip (a static address)")
        return None, None
    subnet = ipaddress.IPv4Network(net.subnet) if net.subnet else None
    text = req.ip if "/" in req.ip or subnet is None else f"{req.ip}/{subnet.prefixlen}"
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise UsageError(f"invalid address {req.ip!r}: use e.g. 10.77.0.20/24") from None
    if subnet and (iface.ip not in subnet or iface.network != subnet):
        raise UsageError(f"address {req.ip} is outside network {net.name} ({subnet})")
    if subnet and iface.ip in (subnet.network_address, subnet.broadcast_address):
        raise UsageError(f"address {req.ip} is not a host address of {subnet}")
    if net.gateway and str(iface.ip) == net.gateway:
        raise ConflictError(f"address {req.ip} is the host's own address on {net.name}")
    gw = req.gateway or net.gateway
    if gw:
        try:
            gw_ip = ipaddress.IPv4Address(gw)
        except ValueError:
            raise UsageError(f"invalid gateway {gw!r}") from None
        if gw_ip not in iface.network:
            raise UsageError(f"gateway {gw} is outside {iface.network}")
    return str(iface), gw


def plan(
    service: NetworkService,
    requests: Sequence[NicRequest],
    *,
    row_id: int,
    default_macs: Sequence[str],
    instances: Sequence[InstanceRow],
) -> list[Attachment]:
    require_root("attaching to a bridged network")
    used_macs: dict[str, set[str]] = {}
    used_ips: dict[str, set[str]] = {}
    for inst in instances:
        for nic in inst.attachments:
            if nic.kind != "bridge" or nic.net is None:
                continue
            used_macs.setdefault(nic.net, set()).add(nic.mac)
            if nic.static_ip:
                used_ips.setdefault(nic.net, set()).add(nic.static_ip)
    tag = short_hash(str(service.rundir))
    out: list[Attachment] = []
    for i, req in enumerate(requests):
        net = service.store.network(req.network)
        if net.state != READY:
            raise ConflictError(f"network {net.name} is {net.state}")
        mac = validate.mac(req.mac) if req.mac else default_macs[i]
        if mac in used_macs.get(net.name, set()) or any(p.mac == mac for p in out):
            raise ConflictError(f"MAC {mac} is already used on network {net.name}")
        addr, gw = _static(req, net)
        if addr and addr.split("/")[0] in used_ips.get(net.name, set()):
            raise ConflictError(f"address {addr} is already used on network {net.name}")
        out.append(
            Attachment(
                kind="bridge",
                mac=mac,
                net=net.name,
                tap=f"ukt{tag}{row_id}n{i}",
                bridge=net.bridge,
                netns=net.netns,
                addr=addr,
                gw=gw,
            )
        )
    if len({p.netns for p in out}) > 1:
        raise UsageError("all networks of one instance must live in the same namespace")
    return out


def create_taps(nics: Sequence[Attachment]) -> None:
    for nic in nics:
        if nic.kind == "bridge" and nic.tap and nic.bridge:
            links.create_tap(nic.tap, nic.bridge, nic.netns)


def detach(nics: Sequence[Attachment], service: NetworkService) -> None:
    """Remove taps, give back DHCP leases, forget neighbour entries."""
    for nic in nics:
        if nic.kind != "bridge" or nic.tap is None or nic.net is None:
            continue
        links.delete_link(nic.tap, nic.netns)
        try:
            net = service.store.network(nic.net)
        except Exception:  # the network is gone already: nothing more to clean
            continue
        if not service.bridge_ok(net):
            continue
        if net.dhcp:
            lease = dnsmasq.lease_for(nic.mac, dnsmasq.DnsmasqFiles(Path(net.rundir)))
            if lease:
                dnsmasq.release(net.bridge, lease, net.netns)
                links.forget_neighbour(net.bridge, lease.ip, net.netns)
        ip = nic.static_ip or nic.found
        if ip:
            links.forget_neighbour(net.bridge, ip, net.netns)
