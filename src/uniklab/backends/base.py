"""The one protocol every hypervisor backend implements, and the specs it takes.

Backends know their hypervisor's command line and file formats; nothing else does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

NetMode = Literal["user", "tap"]


@dataclass(frozen=True)
class NicSpec:
    mac: str
    mode: NetMode = "user"
    forwards: tuple[tuple[int, int], ...] = ()  # (host port on 127.0.0.1, guest port)
    tap: str | None = None  # tap device name, mode == "tap"
    bridge: str | None = None


@dataclass(frozen=True)
class InstanceSpec:
    """What a backend needs to create one guest."""

    name: str
    kernel: Path
    initrd: Path
    cmdline: str
    memory_mb: int
    vcpus: int
    rundir: Path
    nics: tuple[NicSpec, ...] = ()
    disks: tuple[Path, ...] = ()
    netns: str | None = None  # run the hypervisor inside this network namespace
    # Firmware tables: a kernel without VIRTIO_MMIO_CMDLINE_DEVICES (Debian's) finds
    # virtio-mmio devices only through ACPI; a specialised kernel boots faster without.
    acpi: bool = True
    time_service: bool = True  # offer the host's clock to the guest (user-mode NICs)


@dataclass(frozen=True)
class Handle:
    """What the state store keeps to find a guest again: backend-specific, JSON-able."""

    pid: int | None
    runtime: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Inspection:
    alive: bool
    state: str  # running | paused | stopped | gone
    uptime: float | None = None
    cpu_seconds: float | None = None
    rss_bytes: int | None = None
    detail: str = ""


class Backend(Protocol):
    name: str

    def create(self, spec: InstanceSpec) -> Handle: ...

    def inspect(self, handle: Handle) -> Inspection: ...

    def console(self, handle: Handle) -> str: ...

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None: ...
