"""Backends by name.  Each engine's module declares one ``BackendType``; this registry
lists those modules (one line each) and is the only place that chooses among them.

Modules are imported when first asked for, so a command that needs no backend pays for
none (kraftkit's driver registry, with aliases, is the model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uniklab.errors import NotFoundError

if TYPE_CHECKING:
    from uniklab.backends.base import Backend, UserNet
    from uniklab.executor import Executor
    from uniklab.hosts.inventory import Host

# The engines uniklab knows: adding one is a module declaring ``BACKEND`` and a line here.
MODULES = {
    "qemu": "uniklab.backends.qemu",
    "xen": "uniklab.backends.xen",
    "libvirt": "uniklab.backends.libvirt",
}


@dataclass(frozen=True)
class BackendContext:
    """What a backend is made from: the host it drives and how to reach it."""

    host: Host
    executor: Executor
    cache: Path  # the home's cache directory (e.g. the KVM probe's verdict)
    kernel: Path | None = None  # a kernel about to boot (the KVM probe may try it)


@dataclass(frozen=True)
class BackendType:
    name: str
    factory: Callable[[BackendContext], Backend]
    # A guest without --net gets this user-mode network (ports published on 127.0.0.1);
    # None: every guest joins a bridge of its host (``--net BRIDGE`` names one there).
    user_net: UserNet | None
    local_only: bool  # runs guests on this machine only (no remote hosts)
    unavailable: Callable[[], str | None] = field(default=lambda: None)  # why not here
    aliases: tuple[str, ...] = ()
    # The images it boots are those made for this backend's name (libvirt's QEMU driver:
    # "qemu").  Empty: its own name.
    platform: str = ""
    # An engine whose guests differ with the host (libvirt: the driver its URI names) says
    # which of its types serves that host.  None: this one, for every host.
    variant: Callable[[Host], BackendType] | None = None
    # Its clones take an address of their own after a restore (each its own MAC, the
    # guest's init told to ask DHCP again): a template may join a bridge (by DHCP).
    clones_readdress: bool = False
    # How it renders channels (uniklab.channels): "virtio-serial" (the guest's init runs the
    # frame protocol over a port each), "vchan" (the backend's own guest helper; the guest
    # config names none); None: no channels.
    channels: Literal["virtio-serial", "vchan"] | None = None

    @property
    def user_networking(self) -> bool:
        return self.user_net is not None

    @property
    def image_platform(self) -> str:
        return self.platform or self.name


def _load(module: str) -> BackendType:
    backend: BackendType = importlib.import_module(module).BACKEND
    return backend


def names() -> list[str]:
    return list(MODULES)


def get(name: str) -> BackendType:
    """The backend type called ``name`` (or one of its aliases)."""
    if name in MODULES:
        return _load(MODULES[name])
    for module in MODULES.values():
        t = _load(module)
        if name in t.aliases:
            return t
    raise NotFoundError(f"no backend {name!r} (known: {', '.join(MODULES)})")


def for_host(host: Host) -> BackendType:
    """The backend that runs guests on ``host``: the one its inventory entry names (in
    that engine's flavour for the host, when it has several)."""
    t = get(host.hypervisor)
    return t.variant(host) if t.variant is not None else t


def create(name: str, ctx: BackendContext) -> Backend:
    t = get(name)
    if t.local_only and not ctx.host.is_local:
        raise NotFoundError(f"no backend {name!r} on host {ctx.host.name!r} ({name}: local only)")
    return t.factory(ctx)
