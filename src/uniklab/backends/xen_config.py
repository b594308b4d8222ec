"""Pure builder of xl domain configuration files (PV guests), golden-tested.

Every value that goes into the file has been validated by uniklab; this module refuses
anything that could break out of xl's quoted strings all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from uniklab.errors import UsageError

_FORBIDDEN = set("\"'\\\n\r\0")


def _q(value: str) -> str:
    if _FORBIDDEN & set(value):
        raise UsageError(f"value not allowed in a Xen domain config: {value!r}")
    return f'"{value}"'


@dataclass(frozen=True)
class XenVif:
    mac: str
    bridge: str
    script: str | None = None


@dataclass(frozen=True)
class XenDisk:
    path: str  # on the Xen host: the domain's own copy (rumprun's etfs opens it read-write)
    vdev: str  # xvda, xvdb…


@dataclass(frozen=True)
class XenDomain:
    name: str
    kernel: str  # path on the Xen host
    ramdisk: str | None  # None: a unikernel that needs none (rumprun)
    cmdline: str | None  # the Linux command line (extra=, after console=hvc0); None: none
    memory_mb: int
    vcpus: int
    vifs: Sequence[XenVif] = ()
    disks: Sequence[XenDisk] = ()


def build_config(d: XenDomain) -> str:
    vifs = []
    for v in d.vifs:
        spec = f"mac={v.mac},bridge={v.bridge}"
        if v.script:
            spec += f",script={v.script}"
        vifs.append(_q(spec))
    # A file needs a hotplug script for xl to pick blkback ("phy"): "block" (Debian's, or
    # the virtual Xen host's own) loops it.
    disks = [
        _q(f"format=raw,vdev={k.vdev},access=rw,script=block,target={k.path}") for k in d.disks
    ]
    lines = [
        "# written by uniklab",
        f"name = {_q(d.name)}",
        'type = "pv"',
        f"kernel = {_q(d.kernel)}",
        *([f"ramdisk = {_q(d.ramdisk)}"] if d.ramdisk is not None else []),
        *([f"extra = {_q('console=hvc0 ' + d.cmdline)}"] if d.cmdline is not None else []),
        f"memory = {int(d.memory_mb)}",
        f"maxmem = {int(d.memory_mb)}",
        f"vcpus = {int(d.vcpus)}",
        f"vif = [ {', '.join(vifs)} ]",
        *([f"disk = [ {', '.join(disks)} ]"] if disks else []),
        # The guest reboots (Linux's init) or halts (rumprun) when the app exits: that ends
        # the domain, as on QEMU.
        'on_poweroff = "destroy"',
        'on_reboot = "destroy"',
        'on_crash = "destroy"',
    ]
    return "\n".join(lines) + "\n"
