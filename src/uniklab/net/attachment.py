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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

Kind = Literal["user", "bridge", "host-bridge"]


class Attachment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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


def to_json(attachments: Sequence[Attachment]) -> list[dict[str, object]]:
    return [a.model_dump(mode="json") for a in attachments]


def from_json(data: object) -> list[Attachment]:
    if not isinstance(data, list):
        return []
    return [Attachment.model_validate(d) for d in data]
