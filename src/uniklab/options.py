"""How to run an instance: one public, frozen type, validated once when it is made.

The CLI's `run`, ``uniklab.run``/``Client.run``, the pytest plugin's ``unikernel`` and
``uniklab test``'s instances all build a ``RunOptions`` (the API's keyword arguments are
its fields, ``RunFields``); ``Lab.run`` takes it as it is.  A bad value is a one-line
``UsageError`` naming it, raised before anything (a bake included) starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from uniklab import validate
from uniklab.channels import Link, channel_ports, parse_link
from uniklab.errors import UsageError
from uniklab.hosts import placement
from uniklab.net.attach import NicRequest, check_request, parse_net_option

DEFAULT_WAIT = 120.0
RESTART_POLICIES = ("no", "on-failure")

NetArg = str | NicRequest
"""A NIC on a network: ``NicRequest`` or the CLI's ``NET[,mac=M][,ip=CIDR][,gw=IP]``."""
NO_NET = "none"  # --net none: a guest without any NIC (reached over its channels)


class RunFields(TypedDict, total=False):
    """``RunOptions``' fields as keyword arguments (``uniklab.run(image, **fields)``)."""

    name: str | None
    memory: str | int | None
    vcpus: int
    publish: Sequence[tuple[int, int]]
    env: Mapping[str, str] | None
    args: Sequence[str]
    labels: Mapping[str, str] | None
    net: NetArg | Sequence[NetArg] | None
    host: str
    wait: bool
    timeout: float | None
    restart: str
    disks: Sequence[str | tuple[str, str]]
    channels: Sequence[int]
    links: Sequence[str]
    offline: bool
    clone: bool | None


def disk_requests(disks: Sequence[str | tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Block devices as every face takes them: ``(host file, mount point)`` or the CLI's
    ``FILE[:MOUNT]``; the file made absolute, the mount point absolute ("" for none)."""
    out = []
    for d in [disks] if isinstance(disks, str) else disks:
        if isinstance(d, str):
            path, _, mount = d.partition(":")
        elif isinstance(d, tuple | list) and len(d) == 2:
            path, mount = str(d[0]), str(d[1])
        else:
            raise UsageError(f"invalid disk {validate.short(d)}: FILE[:MOUNT] or (FILE, MOUNT)")
        file = Path(path).expanduser().absolute()
        if not path or not file.is_file():
            raise UsageError(f"disk {validate.short(path)}: no such file")
        if mount and (not mount.startswith("/") or any(c in mount for c in ' \t\n"\\,:')):
            raise UsageError(
                f"disk {validate.short(path)}: mount point {mount!r} is not an "
                "absolute path without spaces or quotes"
            )
        out.append((str(file), mount))
    return tuple(out)


def nic_requests(net: NetArg | Sequence[NetArg] | None) -> tuple[NicRequest, ...]:
    """``net`` as every face takes it (one NIC or several, parsed or CLI-style)."""
    if net is None:
        return ()
    if isinstance(net, str | NicRequest):
        net = [net]
    if not isinstance(net, Sequence):
        raise UsageError(f"invalid net {net!r}: a network name, a NicRequest, or a list of them")
    return tuple(parse_net_option(n) if isinstance(n, str) else check_request(n) for n in net)


@dataclass(frozen=True)
class RunOptions:
    """Everything ``run`` takes besides the image.  Fields are normalised when made:
    ``memory`` to MB (None: the image's default), ``net`` to ``NicRequest``s (none: one
    user-mode NIC), ``publish`` to (host port on 127.0.0.1, guest port) pairs (host 0: any
    free port; none: every port of the image)."""

    name: str | None = None
    memory: str | int | None = None
    vcpus: int = 1
    publish: Sequence[tuple[int, int]] = ()
    env: Mapping[str, str] | None = field(default_factory=dict)
    args: Sequence[str] = ()
    labels: Mapping[str, str] | None = field(default_factory=dict)
    net: NetArg | Sequence[NetArg] | None = ()
    host: str = "local"  # an inventory host, "auto" or a pool "a,b"; on Xen --net names bridges
    wait: bool = True
    timeout: float | None = DEFAULT_WAIT  # seconds to be ready (None: the default)
    restart: str = "no"  # or "on-failure": relaunched (up to MAX_RESTARTS) when it crashes
    # Block devices (host file, mount point): rumprun's -b, for rumprun images.
    disks: Sequence[str | tuple[str, str]] = ()
    # Guest ports reached over channels (uniklab.channels); none with net "none": the
    # image's ports.  Links: "OTHER:PORT[:LOCAL]", a guest port of another instance.
    channels: Sequence[int] = ()
    links: Sequence[str] = ()
    # No NIC at all: what net="none" (--net none) sets; kept by dataclasses.replace.
    offline: bool = False
    # A clone of the template of this image and options (made first if missing: see
    # uniklab.templates): True, refused with one line if it cannot be; None: when it can.
    clone: bool | None = False

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if self.name is not None:
            validate.name(self.name, "instance name")
        if self.memory is not None:
            put("memory", validate.memory_mb(self.memory))
        put("vcpus", validate.vcpus(self.vcpus))
        if isinstance(self.args, str):
            raise UsageError("args is a list of arguments, not one string")
        put("env", validate.env(self.env if self.env is not None else {}))
        put("args", tuple(validate.args(self.args)))
        put("labels", validate.labels(self.labels if self.labels is not None else {}))
        if self.restart not in RESTART_POLICIES:
            raise UsageError(f"invalid restart policy {self.restart!r}: use no or on-failure")
        put("timeout", DEFAULT_WAIT if self.timeout is None else self.timeout)
        if self.wait:
            validate.timeout(self.timeout, "readiness timeout")
        pairs = []
        for pair in self.publish if isinstance(self.publish, Sequence) else [self.publish]:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise UsageError(f"invalid port mapping {validate.short(pair)}: (HOST, GUEST)")
            host_port, guest = pair
            validate.port(guest, "guest port")
            if host_port:
                validate.port(host_port, "host port")
            pairs.append((int(host_port or 0), int(guest)))
        put("publish", tuple(pairs))
        if not isinstance(self.offline, bool):
            raise UsageError(f"invalid offline {validate.short(self.offline)}: True or False")
        offline = self.offline or self.net == NO_NET or (
            isinstance(self.net, Sequence)
            and not isinstance(self.net, str)
            and NO_NET in self.net
        )
        if offline and self.net not in (NO_NET, [NO_NET], (NO_NET,), (), [], None):
            raise UsageError("--net none means no NIC: not with another --net")
        if offline and self.publish:
            raise UsageError("-p publishes ports of the user-mode network; not with --net none")
        nets = () if offline else nic_requests(self.net)
        if nets and self.publish:
            raise UsageError("-p publishes ports of the user-mode network; not with --net")
        put("net", nets)
        put("offline", offline)
        put("disks", disk_requests(self.disks))
        put("channels", channel_ports(self.channels))
        put("links", tuple(parse_link(v) for v in self.links))
        if self.clone not in (True, False, None):
            raise UsageError(f"invalid clone {validate.short(self.clone)}: True, False or None")
        placement.check(self.host)  # a host, `auto` or a pool `a,b`: placed by the lab

    @property
    def link_requests(self) -> tuple[Link, ...]:
        """The links asked for (normalised ``links``)."""
        return tuple(v for v in self.links if isinstance(v, Link))

    @property
    def nets(self) -> tuple[NicRequest, ...]:
        """The NICs asked for (normalised ``net``); none means one user-mode NIC."""
        assert isinstance(self.net, tuple)
        return self.net

    @property
    def volumes(self) -> tuple[tuple[str, str], ...]:
        """The block devices asked for (normalised ``disks``): (host file, mount point)."""
        assert isinstance(self.disks, tuple)
        return self.disks

    @property
    def memory_mb(self) -> int | None:
        assert self.memory is None or isinstance(self.memory, int)
        return self.memory
