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
class XenDomain:
    name: str
    kernel: str  # path on the Xen host
    ramdisk: str
    cmdline: str
    memory_mb: int
    vcpus: int
    vifs: Sequence[XenVif] = ()


def build_config(d: XenDomain) -> str:
    vifs = []
    for v in d.vifs:
        spec = f"mac={v.mac},bridge={v.bridge}"
        if v.script:
            spec += f",script={v.script}"
        vifs.append(_q(spec))
    lines = [
        "# written by uniklab",
        f"name = {_q(d.name)}",
        'type = "pv"',
        f"kernel = {_q(d.kernel)}",
        f"ramdisk = {_q(d.ramdisk)}",
        f"extra = {_q('console=hvc0 ' + d.cmdline)}",
        f"memory = {int(d.memory_mb)}",
        f"maxmem = {int(d.memory_mb)}",
        f"vcpus = {int(d.vcpus)}",
        f"vif = [ {', '.join(vifs)} ]",
        # The guest init reboots when the app exits: that ends the domain, as on QEMU.
        'on_poweroff = "destroy"',
        'on_reboot = "destroy"',
        'on_crash = "destroy"',
    ]
    return "\n".join(lines) + "\n"
