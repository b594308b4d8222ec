"""Finding a guest's address by MAC on another host (a Xen dom0), over its executor:
the DHCP server's lease file first, then the host's neighbour table for the bridge."""

from __future__ import annotations

import json
from collections.abc import Sequence

from uniklab.executor import Executor
from uniklab.net.attachment import Attachment
from uniklab.net.discover import Found
from uniklab.net.dnsmasq import parse_leases

DEFAULT_LEASES = ("/var/lib/misc/dnsmasq.leases",)


def lookup(
    ex: Executor, mac: str, bridge: str, leases: Sequence[str] = DEFAULT_LEASES
) -> Found | None:
    mac = mac.lower()
    for path in leases:
        r = ex.run(["cat", path], timeout=20, check=False)
        found = [lease for lease in parse_leases(r.stdout) if lease.mac == mac]
        if found:
            return Found(found[-1].ip, f"dhcp lease on {ex.name}")
    r = ex.run(["ip", "-j", "-4", "neigh", "show", "dev", bridge], timeout=20, check=False)
    try:
        entries = json.loads(r.stdout or "[]")
    except json.JSONDecodeError:
        entries = []
    for e in entries:
        if (
            isinstance(e, dict)
            and str(e.get("lladdr", "")).lower() == mac
            and "FAILED" not in e.get("state", [])
            and "INCOMPLETE" not in e.get("state", [])
        ):
            return Found(str(e["dst"]), f"neighbour table on {ex.name}")
    return None


def lookup_nic(
    ex: Executor, nic: Attachment, leases: Sequence[str] = DEFAULT_LEASES
) -> Found | None:
    """``lookup`` of a NIC on a bridge of the host."""
    return lookup(ex, nic.mac, str(nic.bridge), leases)
