"""The QEMU backend: each guest is a detached QEMU that outlives the CLI.

Its runtime directory holds the pid file, the QMP socket, the console socket and log.
Launch errors (a port already bound, a bad option) are reported by QEMU before it
daemonizes, so ``create`` either returns a running guest or raises with QEMU's words.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from uniklab.backends import hostinfo, process, qmp
from uniklab.backends.base import (
    Check,
    Handle,
    HostFacts,
    Inspection,
    InstanceSpec,
    NicSpec,
    Owned,
)
from uniklab.backends.qemu_argv import TIME_SERVICE, RunFiles, build_argv
from uniklab.backends.registry import BackendContext, BackendType
from uniklab.bake.kernel import host_kernel
from uniklab.errors import CommandError, LaunchError, UniklabError, UsageError
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

    @staticmethod
    def time_source(nics: Sequence[NicSpec]) -> str | None:
        """Where a guest with these NICs reads the host's clock ("IP:PORT"), if anywhere:
        the user-mode network's time service (see qemu_argv._netdev)."""
        if nics and nics[0].mode == "user":
            return "{}:{}".format(*TIME_SERVICE)
        return None

    def create(self, spec: InstanceSpec) -> Handle:
        files = RunFiles(spec.rundir)
        if len(str(files.console_sock)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"runtime directory path too long for a unix socket: {spec.rundir} "
                "(set UNIKLAB_HOME to a shorter path)"
            )
        spec.rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = netns.exec_prefix(spec.netns) + build_argv(
            spec, accel=self.accel, tsc_khz=self.tsc_khz
        )
        (spec.rundir / "argv.json").write_text(json.dumps(argv))
        try:
            self.executor.run(argv, timeout=30)
        except CommandError as exc:
            reason = exc.stderr.strip().splitlines()
            message = reason[-1] if reason else str(exc)
            message = message.removeprefix("qemu-system-x86_64: ")
            raise LaunchError(
                f"QEMU failed to start: {message}", argv=argv, output=exc.stderr
            ) from exc
        try:
            pid = int(files.pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise LaunchError("QEMU started but wrote no pid file", argv=argv) from exc
        # QEMU made its sockets and logs with the caller's umask: make them owner-only.
        for p in spec.rundir.iterdir():
            p.chmod(p.lstat().st_mode & 0o700)
        return Handle(pid=pid, runtime={"rundir": str(spec.rundir), "accel": self.accel})

    @staticmethod
    def _marker(handle: Handle) -> str:
        return str(handle.runtime.get("rundir", "\0"))

    @classmethod
    def _pid(cls, handle: Handle) -> int | None:
        """The guest's QEMU: the handle's pid, else (a run killed before it recorded one)
        the pid file's, if that process is still this instance's."""
        if handle.pid:
            return handle.pid
        rundir = handle.runtime.get("rundir")
        if not rundir:
            return None
        try:
            pid = int(RunFiles(Path(str(rundir))).pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process.matches(pid, cls._marker(handle)) else None

    def inspect(self, handle: Handle) -> Inspection:
        if not process.matches(handle.pid, self._marker(handle)):
            return Inspection(alive=False, state="gone")
        assert handle.pid is not None
        info = process.info(handle.pid)
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
        rundir = handle.runtime.get("rundir")
        if not rundir:
            return ""
        path = RunFiles(Path(str(rundir))).console_log
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        """Ask QEMU to quit over QMP, then SIGTERM, then SIGKILL; remove the runtime dir."""
        marker = self._marker(handle)
        rundir = handle.runtime.get("rundir")
        pid = self._pid(handle)
        try:
            if pid and process.matches(pid, marker):
                if rundir:
                    try:
                        qmp.call(RunFiles(Path(str(rundir))).qmp, "quit", timeout=2.0)
                    except qmp.QmpUnavailable as exc:
                        log.debug("qmp quit failed: %s", exc)
                if not process.wait_gone(pid, marker, min(timeout, 3.0)):
                    process.stop(pid, marker, grace=timeout)
        finally:
            if rundir:
                shutil.rmtree(str(rundir), ignore_errors=True)

    # -- what gc, placement and doctors ask --------------------------------------------
    def key(self, handle: Handle) -> str:
        return str(handle.runtime.get("rundir", ""))

    def owned(self, run_root: Path, *, timeout: float = 30.0) -> list[Owned]:
        """The QEMU processes running out of a runtime directory under ``run_root``."""
        prefix = f"{run_root}/"
        out = []
        for pid, cmd in process.scan("qemu-system"):
            at = cmd.find(prefix)
            if at < 0:
                continue
            name = cmd[at + len(prefix) :].split("/", 1)[0].split(" ", 1)[0]
            key = prefix + name
            out.append(Owned("process", str(pid), key, cmd[:120], ident=pid))
        return out

    def remove(self, item: Owned, *, timeout: float = 30.0) -> None:
        if item.ident is not None:
            process.stop(item.ident, item.key + "/", grace=min(timeout, 3.0))

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
    accel, why = hostinfo.choose_accel(ctx.cache, ctx.kernel)
    log.debug("qemu accelerator %s: %s", accel, why)
    return QemuBackend(accel=accel, tsc_khz=hostinfo.tsc_khz(), executor=ctx.executor)


BACKEND = BackendType(
    name="qemu",
    factory=_create,
    user_networking=True,
    local_only=True,
    unavailable=_unavailable,
    aliases=("kvm",),
)
