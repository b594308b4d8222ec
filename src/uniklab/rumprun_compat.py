"""Turning a rumprun launcher command line into a uniklab run.

``rumprun_args.py`` parses the launcher's options with rumprun's own meanings; this
module maps them onto uniklab: ``-I …,bridge=B`` attaches to the managed network whose
bridge is B, ``-W`` picks DHCP or a static address, ``-M`` the memory, ``-N`` the name,
``-e`` the environment, the words after the image the app's arguments.  rumprun's
qemu/kvm form of ``-I`` carries raw QEMU network words, as its users write them: the
common ones are mapped (``-net user,hostfwd=tcp::H-:G`` onto user-mode networking with
published ports, ``-net bridge,br=B`` and ``-net tap,ifname=T`` onto the uniklab
network whose bridge is B, or holds tap T).  What uniklab cannot honour (other QEMU
words, raw backend arguments, gdb, paused start) is refused with one clear line naming
it rather than silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uniklab.backends import registry
from uniklab.errors import NotFoundError, UsageError
from uniklab.lab import RunOptions
from uniklab.net.attach import NicRequest
from uniklab.rumprun_args import RumprunIf, RumprunInvocation, RumprunNet
from uniklab.state.store import NetworkRow


@dataclass(frozen=True)
class Translated:
    backend: str  # "qemu" or "xen"
    image: str
    options: RunOptions
    interactive: bool


# hostfwd=[tcp]:[127.0.0.1|localhost]:HOSTPORT-[GUESTADDR]:GUESTPORT
_HOSTFWD = re.compile(r"^(tcp)?:(127\.0\.0\.1|localhost)?:(\d+)-[0-9.]*:(\d+)$")
SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class _QemuNet:
    """What rumprun's raw ``-net`` words of one interface come to: user-mode networking
    with these forwards, or a bridge (``bridge``) to find the uniklab network of."""

    user: bool
    forwards: tuple[tuple[int, int], ...] = ()
    bridge: str | None = None


def _qemu_net(iface: RumprunIf) -> _QemuNet | None:
    """The raw QEMU words of a qemu/kvm ``-I``, mapped; None when it gives only
    mac=/bridge= (the uniklab form)."""
    words = list(iface.qemu_args)
    if not words or words[0] not in ("-net", "-netdev"):
        return None
    shown = " ".join(words)
    if len(words) != 2:
        raise UsageError(f"-I {iface.tag}: {shown!r}: give one -net TYPE,OPTIONS")
    kind, *opts = words[1].split(",")
    kv = [o.partition("=") for o in opts]
    if kind == "user":
        forwards = []
        for key, _, value in kv:
            m = _HOSTFWD.match(value) if key == "hostfwd" else None
            if m is None:
                raise UsageError(
                    f"-I {iface.tag}: {key}={value} in -net user is not honoured: uniklab "
                    "forwards TCP from 127.0.0.1 only (hostfwd=tcp::HOSTPORT-:GUESTPORT)"
                )
            forwards.append((int(m.group(3)), int(m.group(4))))
        return _QemuNet(user=True, forwards=tuple(forwards))
    given = {k: v for k, _, v in kv}
    if kind == "bridge" and set(given) <= {"br", "helper"} and given.get("br"):
        return _QemuNet(user=False, bridge=given["br"])
    if kind == "tap" and given.get("ifname") and set(given) <= {"ifname", "script", "downscript"}:
        if given.get("script", "no") != "no" or given.get("downscript", "no") != "no":
            raise UsageError(f"-I {iface.tag}: tap scripts are not run by uniklab (script=no)")
        return _QemuNet(user=False, bridge=_bridge_of_tap(iface.tag, given["ifname"]))
    raise UsageError(
        f"-I {iface.tag}: QEMU network {kind!r} ({shown}) is not honoured: use -net user"
        "[,hostfwd=tcp::H-:G], -net bridge,br=BRIDGE or -net tap,ifname=TAP,script=no"
    )


def _check_user_address(tag: str, spec: RumprunNet) -> None:
    """-W on a user-mode interface: DHCP, or the one address QEMU's user network gives."""
    user = registry.get("qemu").user_net
    assert user is not None
    if spec.method == "static" and (spec.address or "").split("/")[0] != user.guest:
        raise UsageError(
            f"-W {tag}: QEMU's user-mode network gives {user.guest}: use -W {tag},inet,dhcp"
        )


def _bridge_of_tap(tag: str, tap: str) -> str:
    """The bridge tap ``tap`` is enslaved to: uniklab makes its own taps, so a named tap
    stands for the network its bridge carries."""
    master = SYS_NET / tap / "master"
    if not master.exists():
        raise UsageError(
            f"-I {tag}: tap {tap} is not on a bridge here: uniklab makes each guest's tap "
            "itself; name the bridge instead (-net bridge,br=BRIDGE)"
        )
    return master.resolve().name


def _keys(iface: RumprunIf) -> dict[str, str]:
    """mac= and bridge= of an interface, on any platform (qemu words must be just those)."""
    kv = {k: v for k, v in iface.extra}
    if iface.mac:
        kv["mac"] = iface.mac
    if iface.bridge:
        kv["bridge"] = iface.bridge
    for word in ",".join(iface.qemu_args).split(","):
        if not word:
            continue
        key, sep, value = word.partition("=")
        if not sep or key not in ("mac", "bridge"):
            raise UsageError(
                f"-I {iface.tag}: QEMU words ({word!r}) are not honoured; "
                "use mac=… and bridge=…, or -net user|bridge|tap,…"
            )
        kv[key] = value
    unknown = set(kv) - {"mac", "bridge"}
    if unknown:
        raise UsageError(
            f"-I {iface.tag}: unsupported interface options: {', '.join(sorted(unknown))}"
        )
    return kv


def _network_for(bridge: str, networks: Sequence[NetworkRow]) -> str:
    found = [n for n in networks if n.bridge == bridge]
    if not found:
        raise NotFoundError(
            f"no uniklab network uses bridge {bridge} "
            f"(create one: uniklab net create NAME --bridge {bridge} --subnet CIDR)"
        )
    if len(found) > 1:
        raise UsageError(
            f"bridge {bridge} is used by several networks: {', '.join(n.name for n in found)}"
        )
    return found[0].name


def translate(inv: RumprunInvocation, networks: Sequence[NetworkRow]) -> Translated:
    refused = [
        (inv.guest_args, "-g (raw backend arguments)"),
        (inv.gdb_port is not None, "-D (gdb)"),
        (inv.paused, "-p (start paused)"),
    ]
    for present, what in refused:
        if present:
            raise UsageError(f"rumprun option {what} is not supported by uniklab")
    nets = {n.tag: n for n in inv.networks}
    requests: list[NicRequest] = []
    publish: list[tuple[int, int]] = []
    user = False
    for iface in inv.interfaces:
        spec = nets.get(iface.tag)
        if spec is None:
            raise UsageError(f"-I {iface.tag} has no -W {iface.tag},… (how it gets an address)")
        if spec.family != "inet":
            raise UsageError(f"-W {iface.tag}: only inet (IPv4) is supported")
        raw = _qemu_net(iface) if inv.platform != "xen" else None
        if raw is not None and raw.user:
            _check_user_address(iface.tag, spec)
            if user:
                raise UsageError(f"-I {iface.tag}: one user-mode interface per guest")
            user = True
            publish += raw.forwards
            continue
        kv = {"bridge": raw.bridge} if raw is not None and raw.bridge else _keys(iface)
        if "bridge" not in kv:
            raise UsageError(f"-I {iface.tag}: name the bridge (bridge=…) to attach to")
        # On Xen the bridge is the host's own; elsewhere it names a uniklab network.
        bridge = kv["bridge"]
        network = bridge if inv.platform == "xen" else _network_for(bridge, networks)
        requests.append(
            NicRequest(
                network=network,
                mac=kv.get("mac"),
                ip=spec.address if spec.method == "static" else None,
                gateway=spec.gateway if spec.method == "static" else None,
            )
        )
    if user and requests:
        raise UsageError("a user-mode -I (-net user) and a bridged one cannot be mixed here")
    args = list(inv.app_args)
    if args[:1] == ["--"]:
        args = args[1:]
    options = RunOptions(
        name=inv.name,
        memory=inv.memory_mb,
        env=dict(inv.env),
        args=args,
        net=requests,
        publish=publish,
        disks=[(b.path, b.mountpoint or "") for b in inv.blocks],
        wait=False,
    )
    backend = "xen" if inv.platform == "xen" else "qemu"
    return Translated(backend, inv.image, options, inv.interactive)
