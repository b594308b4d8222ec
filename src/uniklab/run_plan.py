"""Planning a `run` before anything is made: the caller's options checked, and each NIC's
MAC, address and hypervisor device decided (user-mode, a bridged tap, or a Xen vif).

Pure decisions over the store's rows; ``Lab.run`` records the plan, then makes it real.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from uniklab import validate
from uniklab.backends.base import NicSpec
from uniklab.backends.qemu_argv import SLIRP_DNS, SLIRP_GUEST, SLIRP_GW
from uniklab.backends.xen import xen_plan
from uniklab.errors import UsageError
from uniklab.guest.config import Nic
from uniklab.net import attach
from uniklab.net.attach import NicRequest, PlannedNic
from uniklab.net.service import NetworkService
from uniklab.state.store import InstanceRow

DEFAULT_WAIT = 120.0
RESTART_POLICIES = ("no", "on-failure")


@dataclass(frozen=True)
class RunOptions:
    name: str | None = None
    memory: str | int | None = None
    vcpus: int = 1
    publish: Sequence[tuple[int, int]] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    nets: Sequence[NicRequest] = ()  # bridged NICs; none means one user-mode NIC
    host: str = "local"  # an inventory host; a Xen host's --net names its bridges
    wait: bool = True
    timeout: float = DEFAULT_WAIT
    restart: str = "no"  # or "on-failure": relaunched (up to MAX_RESTARTS) when it crashes


@dataclass(frozen=True)
class Checked:
    vcpus: int
    env: dict[str, str]
    args: list[str]
    labels: dict[str, str]


def check(o: RunOptions) -> Checked:
    """Everything the caller gave, checked before any work (or bake) starts."""
    if o.name is not None:
        validate.name(o.name, "instance name")
    if o.memory is not None:
        validate.memory_mb(o.memory)
    vcpus = validate.vcpus(o.vcpus)
    if o.restart not in RESTART_POLICIES:
        raise UsageError(f"invalid restart policy {o.restart!r}: use no or on-failure")
    if o.wait:
        validate.timeout(o.timeout, "readiness timeout")
    checked = Checked(vcpus, validate.env(o.env), validate.args(o.args), validate.labels(o.labels))
    for pair in o.publish:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise UsageError(f"invalid port mapping {validate.short(pair)}: (HOST, GUEST)")
        host_port, guest = pair
        validate.port(guest, "guest port")
        if host_port:
            validate.port(host_port, "host port")
    for req in o.nets:
        attach.check_request(req)
    if o.nets and o.publish:
        raise UsageError("-p publishes ports of the user-mode network; not with --net")
    return checked


def instance_mac(name: str, row_id: int, nic: int = 0) -> str:
    """A stable, locally administered unicast MAC (QEMU's 52:54:00 prefix) per NIC."""
    h = hashlib.sha256(f"{name}/{row_id}/{nic}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


@dataclass(frozen=True)
class NicPlan:
    guest: list[Nic]  # what the guest init configures
    specs: tuple[NicSpec, ...]  # what the backend creates
    mac: str  # the first NIC's
    planned: list[PlannedNic] = field(default_factory=list)  # local taps to make
    xen_nics: list[dict[str, str | None]] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)


def plan_nics(
    backend: str,
    nets: Sequence[NicRequest],
    name: str,
    row_id: int,
    networks: NetworkService,
    others: list[InstanceRow],
    forwards: list[tuple[int, int]],
) -> NicPlan:
    macs = [instance_mac(name, row_id, i) for i in range(max(1, len(nets)))]
    if backend == "xen":
        xen_nics = xen_plan(nets, macs[: len(nets)])
        return NicPlan(
            guest=[
                Nic(mac=str(n["mac"]), dhcp=n["addr"] is None, addr=n["addr"], gw=n["gw"])
                for n in xen_nics
            ],
            specs=tuple(
                NicSpec(mac=str(n["mac"]), mode="tap", bridge=n["bridge"]) for n in xen_nics
            ),
            mac=str(xen_nics[0]["mac"]),
            xen_nics=xen_nics,
        )
    if nets:
        planned = attach.plan(networks, nets, row_id=row_id, default_macs=macs, instances=others)
        return NicPlan(
            guest=[Nic(mac=p.mac, dhcp=p.addr is None, addr=p.addr, gw=p.gw) for p in planned],
            specs=tuple(
                NicSpec(mac=p.mac, mode="tap", tap=p.tap, bridge=p.bridge) for p in planned
            ),
            mac=planned[0].mac,
            planned=planned,
        )
    # Slirp's addresses are fixed: configured statically, the guest skips a DHCP exchange
    # (~0.13 s under TCG).
    return NicPlan(
        guest=[Nic(mac=macs[0], dhcp=False, addr=f"{SLIRP_GUEST}/24", gw=SLIRP_GW)],
        specs=(NicSpec(mac=macs[0], mode="user", forwards=tuple(forwards)),),
        mac=macs[0],
        dns=[SLIRP_DNS],
    )
