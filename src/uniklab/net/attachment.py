"""One NIC of an instance, as one typed record: how it is attached, and what was found of it.

Planned before anything is made (``run_plan``), stored in the instance's row (so whatever
is made from it can be undone after a crash), rendered by the backend into its own syntax
(a QEMU ``-netdev``, an xl ``vif``), and asked by ``reach`` how the guest is reached.

Kinds:
- ``user``: the hypervisor's user-mode network; guest ports published on 127.0.0.1.
- ``bridge``: a tap on the bridge of a uniklab network on this machine (maybe inside a
  network namespace), addresses from its dnsmasq or static.
- ``host-bridge``: a bridge of the guest's host (a Xen dom0's ``xenbr0``), which uniklab
  did not make; addresses from that LAN's DHCP or static, found by MAC on that host.

A plain dataclass, not a pydantic model: every row of the state store holds some, and
reading rows (``uniklab ps``) should not cost pydantic's import.  Only uniklab makes them,
from values it has checked; ``from_json`` refuses what it did not write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, get_args

Kind = Literal["user", "bridge", "host-bridge"]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclasses.dataclass(frozen=True)
class Attachment:
    kind: Kind
    mac: str
    forwards: tuple[tuple[int, int], ...] = ()  # user: (port on 127.0.0.1, guest port)
    net: str | None = None  # bridge: the uniklab network
    bridge: str | None = None  # bridge, host-bridge: the bridge device
    tap: str | None = None  # bridge: this machine's tap device
    netns: str | None = None  # bridge: the network's namespace
    addr: str | None = None  # a static address (CIDR); None: DHCP
    gw: str | None = None
    # Found once the guest runs (by DHCP lease or neighbour table), and how.
    found: str | None = None
    found_by: str | None = None

    @property
    def static_ip(self) -> str | None:
        return self.addr.split("/")[0] if self.addr else None


_FIELDS = frozenset(f.name for f in dataclasses.fields(Attachment))


def to_json(attachments: Sequence[Attachment]) -> list[dict[str, object]]:
    return [
        {**dataclasses.asdict(a), "forwards": [list(pair) for pair in a.forwards]}
        for a in attachments
    ]


def from_json(data: object) -> list[Attachment]:
    if not isinstance(data, list):
        return []
    return [_from_dict(d) for d in data]


def _from_dict(d: Any) -> Attachment:
    if not isinstance(d, dict) or not _FIELDS.issuperset(d) or d.get("kind") not in KINDS:
        raise ValueError(f"not a NIC attachment uniklab wrote: {str(d)[:200]}")
    forwards = tuple((int(h), int(g)) for h, g in d.get("forwards", ()))
    return Attachment(**{**d, "forwards": forwards})
