"""What a guest boots with, by image kind: the one place that knows how a Linux image and
a rumprun unikernel are told their app's arguments, environment and network.

A Linux image's init reads ``uniklab.config=`` (``guest.config``) from the kernel
command line; a rumprun unikernel reads rumprun's own JSON config (``guest.rumprun``),
which its backend renders in its own words.  Both become one ``InstanceSpec``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from uniklab import run_plan, validate
from uniklab.backends.base import InstanceSpec
from uniklab.backends.registry import BackendType
from uniklab.bake.image import ImageStore, Manifest
from uniklab.channels import ChannelSpec
from uniklab.errors import UsageError
from uniklab.guest.config import Channel, GuestConfig
from uniklab.guest.rumprun import RumprunConfig, RumprunNet
from uniklab.net.attachment import Attachment


@dataclass(frozen=True)
class BootRequest:
    """One instance's part: who it is, what it runs with, where."""

    name: str
    args: Sequence[str]
    env: dict[str, str]
    disks: Sequence[tuple[str, str]]  # writable block devices: (host file, mount point)
    nics: Sequence[Attachment]
    time_source: str | None
    memory_mb: int
    vcpus: int
    rundir: Path
    channels: Sequence[ChannelSpec] = ()  # uniklab.channels


def instance_spec(
    m: Manifest, images: ImageStore, engine: BackendType, req: BootRequest
) -> InstanceSpec:
    guest_nics, dns = run_plan.guest_nics(req.nics, engine)
    spec = InstanceSpec(
        name=req.name,
        kernel=images.kernel_path(m, engine.image_platform),
        initrd=None,
        cmdline="",
        memory_mb=req.memory_mb,
        vcpus=req.vcpus,
        rundir=req.rundir,
        nics=tuple(req.nics),
        netns=req.nics[0].netns if req.nics else None,
        channels=tuple(req.channels),
    )
    if m.is_rumprun:
        try:
            cfg = RumprunConfig(
                argv=[*m.entrypoint, *req.args],
                env=req.env,
                hostname=req.name,
                net=[RumprunNet.of(n) for n in guest_nics],
                mounts=[d.mount for d in m.disks] + [mount for _, mount in req.disks],
            )
            cfg.cmdline()  # its length, checked before anything is made
        except ValidationError as exc:
            raise UsageError(f"{req.name}: {validate.first_problem(exc, 'config')}") from None
        except ValueError as exc:
            raise UsageError(f"{req.name}: {exc}") from None
        # rumprun keeps its RTC: no time service.
        return replace(
            spec,
            disks=tuple(images.disk_paths(m)),
            volumes=tuple(Path(f) for f, _ in req.disks),
            acpi=False,
            time_service=False,
            rumprun=cfg,
        )
    gcfg = GuestConfig(
        name=req.name,
        args=list(req.args),
        env=req.env,
        net=guest_nics,
        dns=dns,
        timesrc=req.time_source,
        # The init's channel helper speaks virtio-serial; another transport brings its own.
        channels=[
            Channel(name=c.name, port=c.port, dir=c.dir)
            for c in req.channels
            if engine.channels == "virtio-serial"
        ],
    )
    try:
        encoded = gcfg.encode()
    except ValueError as exc:  # too large for the kernel command line
        raise UsageError(f"{req.name}: {exc}: fewer or shorter args and env") from None
    return replace(
        spec,
        initrd=None if m.block_root else images.initrd_path(m),
        root_disk=images.initrd_path(m) if m.block_root else None,
        cmdline=f"{m.cmdline} {encoded}",
        acpi=m.acpi,
    )
