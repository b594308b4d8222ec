"""Turning a rumprun launcher command line into a uniklab run.

``rumprun_args.py`` parses the launcher's options with rumprun's own meanings; this
module maps them onto uniklab: ``-I …,bridge=B`` attaches to the managed network whose
bridge is B, ``-W`` picks DHCP or a static address, ``-M`` the memory, ``-N`` the name,
``-e`` the environment, the words after the image the app's arguments.  What uniklab
cannot honour (block devices, raw backend arguments, gdb, paused start) is refused with
one clear line rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from uniklab.errors import NotFoundError, UsageError
from uniklab.lab import RunOptions
from uniklab.net.attach import NicRequest
from uniklab.rumprun_args import RumprunIf, RumprunInvocation
from uniklab.state.store import NetworkRow


@dataclass(frozen=True)
class Translated:
    backend: str  # "qemu" or "xen"
    image: str
    options: RunOptions
    interactive: bool


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
                f"-I {iface.tag}: raw QEMU arguments ({word!r}) are not passed through; "
                "use mac=… and bridge=…"
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
        (inv.blocks, "-b (block devices)"),
        (inv.guest_args, "-g (raw backend arguments)"),
        (inv.gdb_port is not None, "-D (gdb)"),
        (inv.paused, "-p (start paused)"),
    ]
    for present, what in refused:
        if present:
            raise UsageError(f"rumprun option {what} is not supported by uniklab")
    nets = {n.tag: n for n in inv.networks}
    requests: list[NicRequest] = []
    for iface in inv.interfaces:
        kv = _keys(iface)
        spec = nets.get(iface.tag)
        if spec is None:
            raise UsageError(f"-I {iface.tag} has no -W {iface.tag},… (how it gets an address)")
        if spec.family != "inet":
            raise UsageError(f"-W {iface.tag}: only inet (IPv4) is supported")
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
    args = list(inv.app_args)
    if args[:1] == ["--"]:
        args = args[1:]
    options = RunOptions(
        name=inv.name,
        memory=inv.memory_mb,
        env=dict(inv.env),
        args=args,
        net=requests,
        wait=False,
    )
    backend = "xen" if inv.platform == "xen" else "qemu"
    return Translated(backend, inv.image, options, inv.interactive)
