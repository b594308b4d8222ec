"""A Xen guest with channels, built as ``uniklab.boot`` builds any guest's spec, for the
backend-level Xen channel tests and bench (``tests/backends/test_xen_channels.py``,
``bench/bench_vchan.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from uniklab import boot
from uniklab.backends.base import InstanceSpec
from uniklab.backends.registry import get as backend_type
from uniklab.channels import ChannelSpec
from uniklab.lab import Lab
from uniklab.net.attachment import Attachment


def channel_spec(
    lab: Lab,
    name: str,
    channels: Sequence[ChannelSpec],
    *,
    image: str = "redis",
    nics: Sequence[Attachment] = (),
    args: Sequence[str] = (),
    memory_mb: int = 128,
) -> InstanceSpec:
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
        channels=tuple(channels),
    )
    return boot.instance_spec(m, lab.images, backend_type("xen"), req)
