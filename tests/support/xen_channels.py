"""A Xen guest with channels, built as ``uniklab.boot`` builds any guest's spec, for the
Xen channel tests and bench (``tests/backends/test_xen_channels.py``,
``bench/bench_vchan.py``): the backend reads ``InstanceSpec.channels`` (the field that
``uniklab.channels`` adds), whose shape is ``Chan``'s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from uniklab import boot
from uniklab.backends.base import InstanceSpec
from uniklab.backends.registry import get as backend_type
from uniklab.lab import Lab
from uniklab.net.attachment import Attachment


@dataclass(frozen=True)
class Chan:
    """One channel as a backend reads it (``uniklab.channels.ChannelSpec``'s shape)."""

    port: int
    dir: Literal["in", "out"] = "in"
    target: str | None = None  # "out" (a link): the other instance's channel socket


@dataclass(frozen=True)
class SpecWithChannels(InstanceSpec):
    """An ``InstanceSpec`` with channels."""

    channels: tuple[Any, ...] = ()


def channel_spec(
    lab: Lab,
    name: str,
    channels: Sequence[Chan],
    *,
    image: str = "redis",
    nics: Sequence[Attachment] = (),
    args: Sequence[str] = (),
    memory_mb: int = 128,
) -> SpecWithChannels:
    """``image`` as a Xen guest named ``name`` with ``channels`` (and ``nics``: none by
    default; ``args`` after the image's), its runtime directory made."""
    m = lab.image(image)
    rundir = lab.paths.run / name
    rundir.mkdir(parents=True)
    req = boot.BootRequest(
        name=name,
        args=list(args),
        env={},
        disks=[],
        nics=list(nics),
        time_source=None,
        memory_mb=memory_mb,
        vcpus=1,
        rundir=rundir,
    )
    spec = boot.instance_spec(m, lab.images, backend_type("xen"), req)
    base = {f.name: getattr(spec, f.name) for f in fields(InstanceSpec)}
    return SpecWithChannels(**{**base, "channels": tuple(channels)})
