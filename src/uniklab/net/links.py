"""Bridges and taps through netlink (pyroute2), optionally inside a namespace.

pyroute2 costs tens of milliseconds to import, so the functions that talk netlink import
it: `uniklab ps` and the other verbs that touch no link do not pay for it."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import TYPE_CHECKING

from uniklab.errors import NotFoundError, UniklabError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

IFNAMSIZ = 15


def _ipr(netns: str | None) -> IPRoute:
    from pyroute2 import IPRoute

    return IPRoute(netns=netns) if netns else IPRoute()


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_exists(ifname: str, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        return _index(ipr, ifname) is not None


def is_bridge(ifname: str, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        link = ipr.get_links(idx)[0]
        info = link.get_attr("IFLA_LINKINFO")
        return bool(info and info.get_attr("IFLA_INFO_KIND") == "bridge")


def create_bridge(ifname: str, gateway: ipaddress.IPv4Interface | None, netns: str | None) -> None:
    """Create a bridge (with the host-side address), bring it and lo up."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with _ipr(netns) as ipr:
            ipr.link("add", ifname=ifname, kind="bridge")
            idx = _index(ipr, ifname)
            assert idx is not None
            if gateway is not None:
                ipr.addr(
                    "add", index=idx, address=str(gateway.ip), prefixlen=gateway.network.prefixlen
                )
            ipr.link("set", index=idx, state="up")
            lo = _index(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
    except NetlinkError as exc:
        raise UniklabError(f"cannot create bridge {ifname}: {exc.args[-1]}") from exc


def delete_link(ifname: str, netns: str | None = None) -> bool:
    """Remove a link if present; True if it existed."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr(netns) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != 19:  # ENODEV: someone removed it first
                raise
        return True


def create_tap(ifname: str, bridge: str, netns: str | None) -> None:
    """A tap device enslaved to ``bridge``; QEMU attaches to it by name."""
    from pyroute2.netlink.exceptions import NetlinkError

    if len(ifname) > IFNAMSIZ:
        raise UniklabError(f"interface name too long: {ifname}")
    with _ipr(netns) as ipr:
        br = _index(ipr, bridge)
        if br is None:
            raise NotFoundError(
                f"bridge {bridge} does not exist" + (f" in namespace {netns}" if netns else "")
            )
        try:
            ipr.link("add", ifname=ifname, kind="tuntap", mode="tap")
            idx = _index(ipr, ifname)
            assert idx is not None
            ipr.link("set", index=idx, master=br, state="up")
        except NetlinkError as exc:
            delete_link(ifname, netns)
            raise UniklabError(f"cannot create tap {ifname}: {exc.args[-1]}") from exc


def taps(prefix: str, netns: str | None = None) -> list[str]:
    """Names of links starting with ``prefix`` (uniklab's taps), for leak checks and gc."""
    with _ipr(netns) as ipr:
        names = [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
    return [n for n in names if n.startswith(prefix)]


def neighbours(ifname: str, netns: str | None = None) -> dict[str, str]:
    """The neighbour (ARP) table of one interface: {mac: ipv4} for usable entries."""
    out: dict[str, str] = {}
    with _ipr(netns) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return out
        for n in ipr.get_neighbours(family=2, ifindex=idx):
            mac, ip = n.get_attr("NDA_LLADDR"), n.get_attr("NDA_DST")
            # NUD_INCOMPLETE (0x01) and NUD_FAILED (0x20) have no usable address.
            if mac and ip and not n["state"] & 0x21:
                out[str(mac).lower()] = str(ip)
    return out


def forget_neighbour(ifname: str, ip: str, netns: str | None = None) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr(netns) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return
        with contextlib.suppress(NetlinkError):
            ipr.neigh("del", dst=ip, ifindex=idx)


def ipv4_networks(netns: str | None = None) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks configured on the namespace's interfaces (loopback's left out)."""
    with _ipr(netns) as ipr:
        out = []
        for a in ipr.get_addr(family=2):
            addr = a.get_attr("IFA_ADDRESS")
            if addr and not addr.startswith("127."):
                out.append(ipaddress.IPv4Network(f"{addr}/{a['prefixlen']}", strict=False))
        return out
