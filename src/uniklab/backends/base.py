"""The one protocol every hypervisor backend implements, and the specs it takes.

Backends know their hypervisor's command line and file formats; nothing else does.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from uniklab.errors import UsageError
from uniklab.net import attachment
from uniklab.net.attachment import Attachment

if TYPE_CHECKING:
    from uniklab.channels import ChannelSpec
    from uniklab.guest.rumprun import RumprunConfig


@dataclass(frozen=True)
class UserNet:
    """What a guest sees on its backend's user-mode network (QEMU's slirp): fixed
    addresses, so the guest configures them statically and skips a DHCP exchange."""

    guest: str
    prefix: int
    gateway: str
    dns: str
    time_source: str | None = None  # "IP:PORT" where the host's clock is served


@dataclass(frozen=True)
class InstanceSpec:
    """What a backend needs to create one guest: a Linux kernel (``cmdline`` for it, an
    initrd or a root disk), or a rumprun unikernel (``rumprun``: its config, rendered by
    the backend in its own words; ``disks`` are the image's data disks)."""

    name: str
    kernel: Path
    initrd: Path | None  # None with a root disk
    cmdline: str
    memory_mb: int
    vcpus: int
    rundir: Path
    nics: tuple[Attachment, ...] = ()  # rendered by the backend into its own syntax
    disks: tuple[Path, ...] = ()  # read-only data disks, after the root
    volumes: tuple[Path, ...] = ()  # writable block devices (rumprun's -b), after the disks
    root_disk: Path | None = None  # a read-only root (erofs), the guest's first disk
    netns: str | None = None  # run the hypervisor inside this network namespace
    # Firmware tables: a kernel without VIRTIO_MMIO_CMDLINE_DEVICES (Debian's) finds
    # virtio-mmio devices only through ACPI; a specialised kernel boots faster without.
    acpi: bool = True
    time_service: bool = True  # offer the host's clock to the guest (user-mode NICs)
    rumprun: RumprunConfig | None = None  # a rumprun unikernel, not a Linux kernel
    channels: tuple[ChannelSpec, ...] = ()  # byte streams to guest ports (uniklab.channels)
    # A template's boot: the guest's RAM in this file, shared with the hypervisor's
    # saved state so that clones map it (copy on write) instead of reading it back.
    # None: anonymous memory, as for every other guest.
    memory_file: Path | None = None

    @property
    def guest(self) -> str:
        return "linux" if self.rumprun is None else "rumprun"


def spec_to_json(spec: InstanceSpec) -> dict[str, object]:
    """What it takes to launch the same guest again (restart policies)."""
    return {
        "name": spec.name,
        "kernel": str(spec.kernel),
        "initrd": None if spec.initrd is None else str(spec.initrd),
        "root_disk": None if spec.root_disk is None else str(spec.root_disk),
        "cmdline": spec.cmdline,
        "memory_mb": spec.memory_mb,
        "vcpus": spec.vcpus,
        "rundir": str(spec.rundir),
        "netns": spec.netns,
        "acpi": spec.acpi,
        "time_service": spec.time_service,
        "disks": [str(d) for d in spec.disks],
        "volumes": [str(d) for d in spec.volumes],
        "nics": attachment.to_json(spec.nics),
        "rumprun": None if spec.rumprun is None else spec.rumprun.model_dump(mode="json"),
        "channels": [c.to_json() for c in spec.channels],
    }


def spec_from_json(d: dict[str, Any]) -> InstanceSpec:
    from uniklab.channels import ChannelSpec
    from uniklab.guest.rumprun import RumprunConfig  # pydantic: not on `ps`'s path

    return InstanceSpec(
        name=d["name"],
        kernel=Path(d["kernel"]),
        initrd=None if d["initrd"] is None else Path(d["initrd"]),
        root_disk=Path(d["root_disk"]) if d.get("root_disk") else None,
        cmdline=d["cmdline"],
        memory_mb=int(d["memory_mb"]),
        vcpus=int(d["vcpus"]),
        rundir=Path(d["rundir"]),
        netns=d.get("netns"),
        acpi=bool(d.get("acpi", True)),
        time_service=bool(d.get("time_service", True)),
        disks=tuple(Path(x) for x in d.get("disks", [])),
        volumes=tuple(Path(x) for x in d.get("volumes", [])),
        nics=tuple(attachment.from_json(d["nics"])),
        rumprun=RumprunConfig.model_validate(d["rumprun"]) if d.get("rumprun") else None,
        channels=tuple(ChannelSpec.from_json(c) for c in d.get("channels", [])),
    )


def _machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()


def owner_tag(run_root: Path) -> str:
    """Names a uniklab home (by its runtime root, on this machine) on a shared host: what
    a backend marks its domains with there, so that each home's ``gc`` takes only its own."""
    return hashlib.sha256(f"{_machine_id()}:{run_root}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Handle:
    """What the state store keeps to find a guest again: backend-specific, JSON-able."""

    pid: int | None
    runtime: dict[str, object] = field(default_factory=dict)
    name: str = ""  # the instance's


@dataclass(frozen=True)
class Inspection:
    alive: bool
    state: str  # running | paused | stopped | gone
    uptime: float | None = None
    cpu_seconds: float | None = None
    rss_bytes: int | None = None
    detail: str = ""
    # Bytes the guest received and sent on its NICs (as the guest sees it), when the
    # backend was asked (``inspect(net=True)``) and can tell: None for user-mode networking.
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


@dataclass(frozen=True)
class Owned:
    """Something a backend made for one uniklab home, found without the state store: a
    hypervisor process, a domain, a domain's config.  ``key`` is what ``Backend.key`` says
    of the instance that made it, so a row explains it."""

    kind: str  # process | domain | domain-cfg
    name: str  # as shown to the user (a pid, a domain name)
    key: str
    detail: str
    ident: int | None = None  # the very process or domain found (pid, domid)


@dataclass(frozen=True)
class HostFacts:
    """What placement and doctors ask of a host."""

    free_memory_mb: int
    total_memory_mb: int | None = None
    detail: str = ""  # e.g. "Xen 4.17, dom0 kernel 6.1.0-…"


@dataclass(frozen=True)
class ConsoleAccess:
    """How a terminal joins a guest's serial console: a unix socket carrying its bytes
    both ways (QEMU's chardev), or a command that attaches the caller's terminal itself
    (``xl console`` over ssh).  Either way ^] detaches."""

    socket: Path | None = None
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    """One prerequisite of running guests on a host, with the commands that fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


class Backend(Protocol):
    """One engine on one host.  Everything a caller needs of it is here: nothing outside
    the backend's module knows its hypervisor's commands or files."""

    name: str

    def create(self, spec: InstanceSpec) -> Handle: ...

    def inspect(self, handle: Handle, *, net: bool = False) -> Inspection:
        """The guest now; ``net``: also its NICs' byte counters (may cost a command on a
        remote host, so ``ps`` does not ask)."""
        ...

    def console(self, handle: Handle) -> str: ...

    def follow(self, handle: Handle, *, lines: int | None = None) -> Generator[str, None, None]:
        """The console's last ``lines`` lines so far (all with None), then what the guest
        writes, in chunks as they come; ends once the guest is gone (or when closed)."""
        ...

    def attach(self, handle: Handle) -> ConsoleAccess:
        """How to join the running guest's console; ConflictError if another client holds
        it and the console takes one at a time."""
        ...

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None: ...

    def pause(self, handle: Handle) -> None:
        """Freeze the guest's vCPUs (``inspect`` then says "paused")."""
        ...

    def resume(self, handle: Handle) -> None: ...

    def stop(self, handle: Handle, *, timeout: float) -> int | None:
        """Graceful stop: ask the guest to end its app, give it ``timeout`` seconds, then
        power the guest off hard.  The guest's console stays readable (``console``) until
        ``destroy``; ``create`` of the same spec starts it again.  Returns the app's exit
        status when the guest said it, else None."""
        ...

    def key(self, handle: Handle) -> str:
        """How ``owned`` names this instance's things."""
        ...

    def owned(self, run_root: Path, *, timeout: float = 30.0) -> list[Owned]:
        """What this backend made for the home whose runtime root is ``run_root``, live
        or left over; ``gc`` takes what no instance row's ``key`` explains."""
        ...

    def remove(self, item: Owned, *, timeout: float = 30.0) -> None:
        """Remove one leftover of ``owned`` (that very process or domain, and its files)."""
        ...

    def facts(self, *, timeout: float = 30.0) -> HostFacts: ...

    def doctor(self, *, bridge: str | None = None) -> list[Check]:
        """Is the host ready for this backend's guests (and ``bridge``, if named, there)?
        Each failure names its fix."""
        ...

    # -- templates and clones (templates.py keeps them; a backend that cannot says so) ---
    def template_key(self, spec: InstanceSpec) -> dict[str, object]:
        """What makes a template of ``spec`` differ on this backend besides the spec
        (its version, accelerator, the guest's shape in its own words): part of the
        template's key.  ``spec`` comes with its name, paths and host ports made neutral
        by the caller.  By default: nothing more."""
        return {}

    def save_template(self, handle: Handle, dest: Path) -> None:
        """The guest is ready: pause it, save its state into the directory ``dest`` (made
        by the caller, files of the backend's choosing), then end the guest."""
        raise UsageError(f"the {self.name} backend cannot make templates")

    def restore_clone(self, spec: InstanceSpec, template: Path) -> Handle:
        """Start a new guest from the template directory ``template`` (what
        ``save_template`` wrote), with ``spec``'s name, runtime directory and NICs (its own
        forwarded ports), running, its clock set from the host's; return its handle."""
        raise UsageError(f"the {self.name} backend cannot make templates")

    def drop_template(self, template: Path, *, timeout: float = 60.0) -> None:
        """Remove what the template in the directory ``template`` keeps outside it (a
        checkpoint on a remote host), within ``timeout``; the directory itself is the
        caller's.  By default nothing: the backend keeps everything in that directory."""
        return None
