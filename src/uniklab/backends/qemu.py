"""The QEMU backend: each guest is a detached QEMU that outlives the CLI.

Its runtime directory holds the pid file, the QMP socket, the console socket and log.
Launch errors (a port already bound, a bad option) are reported by QEMU before it
daemonizes, so ``create`` either returns a running guest or raises with QEMU's words.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from uniklab import daemons
from uniklab.backends import hostinfo, qemu_process
from uniklab.backends.base import (
    Check,
    Handle,
    HostFacts,
    Inspection,
    InstanceSpec,
    Owned,
)
from uniklab.backends.qemu_argv import USER_NET, RunFiles, build_argv
from uniklab.backends.registry import BackendContext, BackendType
from uniklab.bake.kernel_choice import host_kernel
from uniklab.errors import UniklabError, UsageError
from uniklab.executor import Executor, local
from uniklab.net import netns

log = logging.getLogger(__name__)

# sun_path is 108 bytes; keep a margin.
MAX_SOCKET_PATH = 100


class QemuBackend:
    name = "qemu"

    def __init__(self, *, accel: str, tsc_khz: int | None, executor: Executor = local) -> None:
        self.accel = accel
        self.tsc_khz = tsc_khz
        self.executor = executor

    def create(self, spec: InstanceSpec) -> Handle:
        files = RunFiles(spec.rundir)
        if len(str(files.console_sock)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"runtime directory path too long for a unix socket: {spec.rundir} "
                "(set UNIKLAB_HOME to a shorter path)"
            )
        argv = netns.exec_prefix(spec.netns) + build_argv(
            spec, accel=self.accel, tsc_khz=self.tsc_khz
        )
        pid = qemu_process.launch(argv, files, timeout=30, executor=self.executor)
        return Handle(pid=pid, runtime={"rundir": str(spec.rundir), "accel": self.accel})

    @staticmethod
    def _files(handle: Handle) -> RunFiles | None:
        rundir = handle.runtime.get("rundir")
        return RunFiles(Path(str(rundir))) if rundir else None

    def inspect(self, handle: Handle) -> Inspection:
        files = self._files(handle)
        if files is None or not qemu_process.running(handle.pid, files):
            return Inspection(alive=False, state="gone")
        assert handle.pid is not None
        info = daemons.info(handle.pid)
        if info is None:
            return Inspection(alive=False, state="gone")
        state = "running"
        if info.state == "T":
            state = "paused"
        return Inspection(
            alive=True,
            state=state,
            uptime=info.uptime,
            cpu_seconds=info.cpu_seconds,
            rss_bytes=info.rss_bytes,
        )

    def console(self, handle: Handle) -> str:
        files = self._files(handle)
        return "" if files is None else qemu_process.console(files)

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        """Ask QEMU to quit over QMP, then SIGTERM, then SIGKILL; remove the runtime dir."""
        files = self._files(handle)
        if files is not None:
            pid = qemu_process.pid_of(files, handle.pid)
            qemu_process.shutdown(files, pid, ask_wait=min(timeout, 3.0), grace=timeout)

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
    return QemuBackend(accel=accel, tsc_khz=hostinfo.tsc_khz(), executor=ctx.executor)


BACKEND = BackendType(
    name="qemu",
    factory=_create,
    user_net=USER_NET,
    local_only=True,
    unavailable=_unavailable,
    aliases=("kvm",),
)
