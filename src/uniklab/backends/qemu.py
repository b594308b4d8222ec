"""The QEMU backend: each guest is a detached QEMU that outlives the CLI.

Its runtime directory holds the pid file, the QMP socket, the console socket and log.
Launch errors (a port already bound, a bad option) are reported by QEMU before it
daemonizes, so ``create`` either returns a running guest or raises with QEMU's words.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Generator
from pathlib import Path

from uniklab import consoles, daemons
from uniklab.backends import hostinfo, netdev, qemu_process, qmp
from uniklab.backends.base import (
    Backend,
    Check,
    ConsoleAccess,
    Handle,
    HostFacts,
    Inspection,
    InstanceSpec,
    Owned,
)
from uniklab.backends.qemu_argv import USER_NET, RunFiles, build_argv
from uniklab.backends.registry import BackendContext, BackendType
from uniklab.bake.kernel_choice import host_kernel
from uniklab.errors import ConflictError, NotFoundError, UniklabError, UsageError
from uniklab.executor import Executor, local
from uniklab.guest import console as guest_console
from uniklab.net import netns

log = logging.getLogger(__name__)

# sun_path is 108 bytes; keep a margin.
MAX_SOCKET_PATH = 100
# stop: how long a Linux guest's init may take to power off after the app's deadline, and
# how long a rumprun guest gets to answer ACPI's power button.
POWEROFF_WAIT = 5.0
POWERDOWN_WAIT = 2.0


class QemuBackend(Backend):
    name = "qemu"

    def __init__(self, *, accel: str, executor: Executor = local) -> None:
        self.accel = accel
        self.executor = executor

    def create(self, spec: InstanceSpec) -> Handle:
        files = RunFiles(spec.rundir)
        if len(str(files.console_sock)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"runtime directory path too long for a unix socket: {spec.rundir} "
                "(set UNIKLAB_HOME to a shorter path)"
            )
        argv = netns.exec_prefix(spec.netns) + build_argv(
            spec, accel=self.accel, tsc_khz=hostinfo.tsc_khz()
        )
        pid = qemu_process.launch(argv, files, timeout=30, executor=self.executor)
        taps = [nic.tap for nic in spec.nics if nic.tap]
        return Handle(
            pid=pid,
            runtime={
                "rundir": str(spec.rundir),
                "accel": self.accel,
                "taps": taps,
                "guest": spec.guest,  # how stop asks it to end
            },
        )

    @staticmethod
    def _files(handle: Handle) -> RunFiles | None:
        rundir = handle.runtime.get("rundir")
        return RunFiles(Path(str(rundir))) if rundir else None

    def inspect(self, handle: Handle, *, net: bool = False) -> Inspection:
        files = self._files(handle)
        if files is None or not qemu_process.running(handle.pid, files):
            return Inspection(alive=False, state="gone")
        assert handle.pid is not None
        info = daemons.info(handle.pid)
        if info is None:
            return Inspection(alive=False, state="gone")
        state = "running"
        if info.state == "T" or files.paused.exists():
            state = "paused"
        rx_tx = self._net_bytes(handle) if net else None
        return Inspection(
            alive=True,
            state=state,
            uptime=info.uptime,
            cpu_seconds=info.cpu_seconds,
            rss_bytes=info.rss_bytes,
            net_rx_bytes=rx_tx[0] if rx_tx else None,
            net_tx_bytes=rx_tx[1] if rx_tx else None,
        )

    @staticmethod
    def _net_bytes(handle: Handle) -> tuple[int, int] | None:
        """The guest's bytes through its taps, read in QEMU's own network namespace (the
        taps live there); None for user-mode networking, whose traffic no device counts."""
        taps = handle.runtime.get("taps")
        if not taps or not isinstance(taps, list):
            return None
        try:
            text = Path(f"/proc/{handle.pid}/net/dev").read_text()
        except OSError:
            return None
        return netdev.guest_bytes(netdev.parse(text), [str(t) for t in taps])

    def console(self, handle: Handle) -> str:
        files = self._files(handle)
        return "" if files is None else qemu_process.console(files)

    def follow(self, handle: Handle, *, lines: int | None = None) -> Generator[str, None, None]:
        """The console log as QEMU writes it, tailed; ends once QEMU is gone."""
        files = self._files(handle)
        if files is None:  # never launched: nothing to say
            return consoles.follow_file(Path(os.devnull), lambda: False)
        return consoles.follow_file(
            files.console_log, lambda: qemu_process.running(handle.pid, files), lines=lines
        )

    def attach(self, handle: Handle) -> ConsoleAccess:
        files = self._files(handle)
        if files is None or not qemu_process.running(handle.pid, files):
            raise UniklabError(f"{handle.name} is not running: no console to attach to")
        if qemu_process.console_in_use(files):
            raise ConflictError(
                f"{handle.name}'s console is in use by another client "
                "(QEMU serves one at a time): detach that one first"
            )
        return ConsoleAccess(socket=files.console_sock)

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        """Ask QEMU to quit over QMP, then SIGTERM, then SIGKILL; remove the runtime dir."""
        files = self._files(handle)
        if files is not None:
            pid = qemu_process.pid_of(files, handle.pid)
            qemu_process.shutdown(files, pid, ask_wait=min(timeout, 3.0), grace=timeout)

    def pause(self, handle: Handle) -> None:
        files = self._live(handle)
        qmp.call(files.qmp, "stop")
        files.paused.touch()

    def resume(self, handle: Handle) -> None:
        files = self._live(handle)
        qmp.call(files.qmp, "cont")
        files.paused.unlink(missing_ok=True)

    def stop(self, handle: Handle, *, timeout: float) -> int | None:
        """A Linux guest: the init hears "stop" on the console (SIGTERM to the app, SIGKILL
        after ``timeout``) and powers off, which ends QEMU (-no-reboot); a rumprun guest
        has no init of ours: ACPI's power button, briefly.  Then QMP ``quit``, SIGTERM,
        SIGKILL.  The runtime directory (console log) stays for ``create`` and ``logs``."""
        files = self._files(handle)
        if files is None:
            return None
        pid = qemu_process.pid_of(files, handle.pid)
        if not qemu_process.running(pid, files):
            return None
        try:
            seen = files.console_log.stat().st_size
        except OSError:
            seen = 0
        if files.paused.exists():
            qemu_process.ask_qmp(files, "cont")  # a frozen guest hears nothing
            files.paused.unlink(missing_ok=True)
        if handle.runtime.get("guest", "linux") == "linux":
            # The init's SIGKILL comes at ``timeout``; its power-off takes a moment more.
            qemu_process.tell_console(
                files,
                lambda t: guest_console.control_line("stop", str(math.ceil(max(0, timeout - t)))),
                heard=guest_console.STOP_HEARD.encode(),
                until=lambda: not qemu_process.running(pid, files),
                timeout=timeout + POWEROFF_WAIT,
            )
            qemu_process.end(files, pid, ask=lambda: None, ask_wait=0.0, grace=3.0)
        else:
            qemu_process.end(
                files,
                pid,
                ask=lambda: qemu_process.ask_qmp(files, "system_powerdown"),
                ask_wait=min(timeout, POWERDOWN_WAIT),
                grace=3.0,
            )
        files.paused.unlink(missing_ok=True)
        try:
            with files.console_log.open("rb") as f:
                f.seek(seen)
                said = f.read().decode(errors="replace")
        except OSError:
            return None
        return guest_console.app_exit_status(said)

    def _live(self, handle: Handle) -> RunFiles:
        files = self._files(handle)
        if files is None or not qemu_process.running(handle.pid, files):
            raise NotFoundError(f"{handle.name or 'the guest'} is not running")
        return files

    # -- what gc, placement and doctors ask --------------------------------------------
    def key(self, handle: Handle) -> str:
        return str(handle.runtime.get("rundir", ""))

    def owned(self, run_root: Path, *, timeout: float = 30.0) -> list[Owned]:
        """The QEMU processes running out of a runtime directory under ``run_root``."""
        prefix = f"{run_root}/"
        out = []
        for pid, cmd in daemons.scan("qemu-system"):
            at = cmd.find(prefix)
            if at < 0:
                continue
            name = cmd[at + len(prefix) :].split("/", 1)[0].split(" ", 1)[0]
            key = prefix + name
            out.append(Owned("process", str(pid), key, cmd[:120], ident=pid))
        return out

    def remove(self, item: Owned, *, timeout: float = 30.0) -> None:
        if item.ident is not None:
            daemons.stop(item.ident, item.key + "/", grace=min(timeout, 3.0))

    def facts(self, *, timeout: float = 30.0) -> HostFacts:
        mem = hostinfo.meminfo()
        return HostFacts(
            free_memory_mb=mem.get("MemAvailable", 0) // 1024,
            total_memory_mb=mem.get("MemTotal", 0) // 1024 or None,
            detail=f"QEMU ({self.accel})",
        )

    def doctor(self, *, bridge: str | None = None) -> list[Check]:
        return doctor(self.accel, bridge)


def doctor(accel: str, bridge: str | None = None) -> list[Check]:
    """This machine's prerequisites for QEMU guests, each failure with its fix."""
    qemu = shutil.which(hostinfo.QEMU)
    checks = [
        Check(
            f"{hostinfo.QEMU} installed",
            qemu is not None,
            qemu or "not on PATH",
            "apt-get install -y qemu-system-x86",
        ),
        Check(
            "acceleration",
            True,
            "KVM" if accel == "kvm" else "TCG (KVM not usable here: guests boot slower)",
        ),
    ]
    try:
        path, _ = host_kernel()
        checks.append(Check("readable kernel", True, str(path)))
    except UniklabError as exc:
        checks.append(
            Check("readable kernel", False, str(exc), "apt-get install -y linux-image-amd64")
        )
    if bridge:
        ok = os.path.isdir(f"/sys/class/net/{bridge}/bridge")
        checks.append(
            Check(
                f"bridge {bridge}",
                ok,
                "present" if ok else "missing",
                f"uniklab net create NAME --bridge {bridge} --subnet …",
            )
        )
    return checks


def _unavailable() -> str | None:
    if shutil.which(hostinfo.QEMU) is None:
        return f"{hostinfo.QEMU} not found (apt-get install qemu-system-x86)"
    return None


def _create(ctx: BackendContext) -> QemuBackend:
    accel, why = hostinfo.choose_accel(ctx.kernel)
    log.debug("qemu accelerator %s: %s", accel, why)
    # The TSC rate is asked when a guest is launched (dmesg, a subprocess): ps, logs and
    # destroy never need it.
    return QemuBackend(accel=accel, executor=ctx.executor)


BACKEND = BackendType(
    name="qemu",
    factory=_create,
    user_net=USER_NET,
    local_only=True,
    unavailable=_unavailable,
    aliases=("kvm",),
)
