"""Pure builder of QEMU command lines: no I/O, golden-tested.

A Linux guest: microvm with ACPI off and virtio-mmio devices declared on the kernel
command line (QEMU adds ``virtio_mmio.device=`` itself): the cheapest direct-kernel boot
QEMU offers.  A rumprun guest (``hw``: a multiboot kernel that finds its devices on PCI):
the ``pc`` machine with virtio-net-pci and virtio-blk-pci, its JSON config as the command
line, as rumprun's own launcher (``app-tools/rumprun``, ``run_qemu``) starts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from uniklab.backends.base import InstanceSpec, UserNet
from uniklab.errors import LaunchError
from uniklab.net.attachment import Attachment

QEMU = "qemu-system-x86_64"
# Where a user-mode guest finds the host's clock (see _netdev).
TIME_SERVICE = ("10.0.2.100", 37)
# Slirp's fixed addresses on a user-mode network: the guest (what QEMU's built-in DHCP
# would give), the gateway and the DNS forwarder; and where the guest reads the host's clock.
USER_NET = UserNet(
    guest="10.0.2.15",
    prefix=24,
    gateway="10.0.2.2",
    dns="10.0.2.3",
    time_source="{}:{}".format(*TIME_SERVICE),
)


@dataclass(frozen=True)
class RunFiles:
    """The files of one instance's runtime directory."""

    rundir: Path

    @property
    def qmp(self) -> Path:
        return self.rundir / "qmp.sock"

    @property
    def console_sock(self) -> Path:
        return self.rundir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.rundir / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.rundir / "qemu.pid"

    @property
    def stderr_log(self) -> Path:
        return self.rundir / "qemu.log"

    def channel_transport(self, name: str) -> Path:
        """QEMU's end of a channel (a virtserialport's chardev): the channel proxy joins it."""
        return self.rundir / f"vser-{name}.sock"

    @property
    def paused(self) -> Path:
        """Present while uniklab holds the guest paused (QMP ``stop``)."""
        return self.rundir / "paused"


def _opt(path: Path | str) -> str:
    """Escape a value for QEMU's comma-separated option syntax."""
    return str(path).replace(",", ",,")


CONSOLE_CHARDEV = "con0"  # the serial console's chardev: its QMP label


def _runtime_args(files: RunFiles) -> list[str]:
    """The runtime directory's part of a command line: console (socket + log), QMP, pid."""
    return [
        "-chardev",
        f"socket,id={CONSOLE_CHARDEV},path={_opt(files.console_sock)},server=on,wait=off,"
        f"logfile={_opt(files.console_log)},logappend=on",
        "-serial",
        f"chardev:{CONSOLE_CHARDEV}",
        "-qmp",
        f"unix:{_opt(files.qmp)},server=on,wait=off",
        "-pidfile",
        str(files.pidfile),
    ]


def _netdev(index: int, nic: Attachment, time_service: bool, bus: str) -> list[str]:
    nid = f"n{index}"
    if nic.kind == "user":
        opts = [f"user,id={nid}"]
        opts += [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in nic.forwards]
        if time_service and index == 0:
            # The emulated RTC ticks in whole seconds with a phase set by QEMU's start,
            # so a TCG guest cannot learn the time to the millisecond from it.  Each
            # connection to this address runs `date` on the host: the init reads the
            # host's clock there and corrects for the round trip.
            host, port = TIME_SERVICE
            opts.append(f"guestfwd=tcp:{host}:{port}-cmd:date +%s.%N")
        netdev = ",".join(opts)
    elif nic.kind == "bridge" and nic.tap:
        netdev = f"tap,id={nid},ifname={nic.tap},script=no,downscript=no"
    else:
        raise LaunchError(f"QEMU here cannot join {nic.kind} {nic.bridge or ''}".rstrip())
    return ["-netdev", netdev, "-device", f"virtio-net-{bus},netdev={nid},mac={nic.mac}"]


def _channels(spec: InstanceSpec, files: RunFiles, bus: str) -> list[str]:
    """One virtio-serial controller, a named port per channel on a chardev socket that QEMU
    serves (wait=off: the proxy connects after QEMU has started)."""
    if not spec.channels:
        return []
    argv = ["-device", f"virtio-serial-{bus},id=vser0"]
    for i, ch in enumerate(spec.channels):
        argv += [
            "-chardev",
            f"socket,id=ch{i},path={_opt(files.channel_transport(ch.name))},server=on,wait=off",
            "-device",
            f"virtserialport,bus=vser0.0,chardev=ch{i},name={ch.name}",
        ]
    return argv


def _rumprun_cmdline(spec: InstanceSpec) -> str:
    """The rumprun config for ``hw``: virtio NICs are vioif<N>, virtio disks ld<N>."""
    assert spec.rumprun is not None
    try:
        return spec.rumprun.render(
            netif="vioif", cloner=False, blk=lambda i: {"source": "dev", "path": f"/dev/ld{i}a"}
        )
    except ValueError as exc:
        raise LaunchError(f"{spec.name}: {exc}") from None


def _linux_cmdline(spec: InstanceSpec, accel: str, tsc_khz: int | None) -> str:
    cmdline = f"console=ttyS0 {spec.cmdline}"
    if accel == "tcg" and tsc_khz:
        # Under TCG the guest's TSC is the host's: give its frequency (the kernel's PIT
        # calibration fails under TCG) and trust it.  Without tsc=reliable the clocksource
        # watchdog compares it with jiffies, which lose ticks on a loaded host, calls the
        # TSC unstable and falls back to jiffies: the guest clock then falls behind by
        # hundreds of milliseconds within seconds of boot (seen: -245 to -418 ms).
        cmdline = f"{cmdline} tsc_early_khz={tsc_khz} tsc=reliable"
    if accel == "tcg":
        # The IO-APIC setup checks that the timer interrupt arrives by spinning until 4-5
        # jiffies pass (52 ms measured at the specialised kernel's HZ=100); QEMU's IO-APIC
        # always routes the PIT to pin 2, so skip the check (Kata Containers' guests do too).
        cmdline = f"{cmdline} no_timer_check"
    if accel == "tcg" and spec.vcpus == 1 and not spec.acpi:
        # TCG has no TSC-deadline timer, so the kernel calibrates the local APIC timer
        # against jiffies for 100 ms of guest time (~0.27 s under TCG).  One vCPU needs no
        # per-CPU timer: the PIT serves as the clock event device instead.  Only with ACPI
        # off (the specialised kernel, interrupts routed from the MP table): Debian's
        # kernel on microvm's ACPI tables got no timer interrupt that way and hung in its
        # first sleep.
        cmdline = f"{cmdline} noapictimer"
    return cmdline


def _memory(spec: InstanceSpec, machine: list[str], incoming: bool) -> list[str]:
    """Guest RAM in ``spec.memory_file`` when it has one: a template's, shared (the file
    holds the RAM its saved state leaves out: ``x-ignore-shared``), or a clone's, the same
    file mapped privately (pages shared with every clone until one writes them)."""
    if spec.memory_file is None:
        return []
    machine[1] += ",memory-backend=ram0"
    share = "off" if incoming else "on"
    return [
        "-object",
        f"memory-backend-file,id=ram0,size={spec.memory_mb}M,"
        f"mem-path={_opt(spec.memory_file)},share={share}",
    ]


def build_argv(
    spec: InstanceSpec,
    *,
    accel: str,
    tsc_khz: int | None,
    daemonize: bool = True,
    incoming: bool = False,
) -> list[str]:
    """``incoming``: a clone, started paused for its template's state (``migrate-incoming``)."""
    files = RunFiles(spec.rundir)
    if spec.rumprun is not None:
        # rumprun's launcher: QEMU's default CPU under TCG (2015's rumprun meets no CPU
        # feature it does not know), PCI devices.
        cmdline = _rumprun_cmdline(spec)
        machine = ["-M", "pc", "-accel", accel, *(["-cpu", "host"] if accel == "kvm" else [])]
        # When rumprun halts (the app is done) it writes to this port (the project's patch
        # hw-halt-exits-qemu): QEMU exits, as -no-reboot makes it for a Linux guest.
        machine += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        bus = "pci"
    else:
        cmdline = _linux_cmdline(spec, accel, tsc_khz)
        machine = [
            "-M",
            f"microvm,acpi={'on' if spec.acpi else 'off'},x-option-roms=off",
            "-accel",
            accel,
            # -cpu max offers RDRAND: the guest does not wait ~1 s for entropy under TCG.
            # Without ERMS/FSRM the kernel clears and copies memory with unrolled 8-byte
            # moves (memset_orig, clear_page_orig, memcpy_orig: TCG's CPU is an AMD family
            # 15, so no REP_GOOD either) instead of `rep stosb`/`rep movsb`, which TCG runs
            # one byte per iteration.  With no_timer_check (below), measured for the
            # smallest image: ~65 ms less QEMU CPU time and 0.15-0.2 s less wall time from
            # run to PONG (medians of alternated boots; page clearing at Redis's start).
            "-cpu",
            "host" if accel == "kvm" else "max,-erms,-fsrm",
        ]
        bus = "device"
    memory = _memory(spec, machine, incoming)
    argv = [
        QEMU,
        "-name",
        f"uniklab-{spec.name},process=uniklab-{spec.name}",
        *machine,
        *memory,
        "-m",
        f"{spec.memory_mb}M",
        "-smp",
        str(spec.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(spec.kernel),
        *(["-initrd", str(spec.initrd)] if spec.initrd is not None else []),
        "-append",
        cmdline,
        *_runtime_args(files),
    ]
    for i, nic in enumerate(spec.nics):
        argv += _netdev(i, nic, spec.time_service, bus)
    # The root disk comes first (/dev/vda), then the image's data disks; all read-only,
    # so every guest of an image shares the image's own files (QEMU's lock allows many
    # readers).
    disks = [(spec.root_disk, True)] if spec.root_disk is not None else []
    disks += [(d, True) for d in spec.disks] + [(v, False) for v in spec.volumes]
    for i, (disk, readonly) in enumerate(disks):
        ro = ",readonly=on" if readonly else ""
        argv += [
            "-drive",
            f"id=d{i},file={_opt(disk)},format=raw,if=none{ro}",
            "-device",
            f"virtio-blk-{bus},drive=d{i}",
        ]
    argv += _channels(spec, files, bus)
    if incoming:
        argv += ["-incoming", "defer"]
    if daemonize:
        argv.append("-daemonize")
    return argv


# The virtual Xen host's CPU (build_xenhost_argv says why each feature is off).
XENHOST_CPU = "max,-smap,-xsave,-avx,-avx2"


@dataclass(frozen=True)
class XenHostSpec:
    """A virtual Xen host: Xen as a multiboot kernel, a PV dom0 kernel and initramfs as
    its modules, one user-mode NIC that forwards a 127.0.0.1 port to dom0's sshd."""

    name: str
    xen: Path  # the decompressed hypervisor (a 32-bit multiboot ELF)
    xen_args: str
    dom0_kernel: Path
    dom0_args: str
    dom0_initrd: Path
    rundir: Path
    ssh_port: int
    memory_mb: int = 2048
    cpus: int = 2
    mac: str = "52:54:00:58:45:4e"


def build_xenhost_argv(spec: XenHostSpec, *, daemonize: bool = True) -> list[str]:
    """QEMU (TCG, ``-M pc``) booting Xen with the dom0 kernel and initramfs as modules.

    ``-cpu max`` without SMAP: with SMAP offered, Xen 4.17's PV dom0 faults at its first
    iretq under TCG.  Without XSAVE and AVX either: processes of the dom0 (xl, libvirtd,
    sshd) and a restored domU failed at random in CI runs (a segfault, ld.so finding its
    own state inconsistent, a Redis that stopped answering), with one TCG thread per vCPU
    and with one for both.  AVX came to TCG in QEMU 7.2 (Debian 12's), and every context
    switch of Xen's saves and restores the YMM state through TCG's XSAVE; without them Xen
    and its guests use SSE and FXSAVE, decades old in TCG.  One TCG thread for both vCPUs
    (``thread=single``), kept from the first suspect (races between TCG threads): it
    costs little.  Xen drops the first word of a module's string (the "file name"), so
    the dom0 kernel's module string is "<path> <dom0 args>"; QEMU
    separates modules by commas, hence the ``_opt`` escaping.
    """
    files = RunFiles(spec.rundir)
    modules = f"{_opt(spec.dom0_kernel)} {_opt(spec.dom0_args)},{_opt(spec.dom0_initrd)}"
    argv = [
        QEMU,
        "-name",
        f"uniklab-lab-{spec.name},process=uniklab-lab-{spec.name}",
        "-M",
        "pc",
        "-accel",
        "tcg,thread=single",
        "-cpu",
        XENHOST_CPU,
        "-m",
        f"{spec.memory_mb}M",
        "-smp",
        str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(spec.xen),
        "-append",
        spec.xen_args,
        "-initrd",
        modules,
        *_runtime_args(files),
        "-netdev",
        f"user,id=n0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={spec.mac}",
    ]
    if daemonize:
        argv.append("-daemonize")
    return argv
