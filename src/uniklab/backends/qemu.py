"""The QEMU backend: each guest is a detached QEMU that outlives the CLI.

Its runtime directory holds the pid file, the QMP socket, the console socket and log.
Launch errors (a port already bound, a bad option) are reported by QEMU before it
daemonizes, so ``create`` either returns a running guest or raises with QEMU's words.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from uniklab.backends import process, qmp
from uniklab.backends.base import Handle, Inspection, InstanceSpec, NicSpec
from uniklab.backends.qemu_argv import TIME_SERVICE, RunFiles, build_argv
from uniklab.errors import CommandError, LaunchError, UsageError
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
        try:
            if handle.pid and process.matches(handle.pid, marker):
                if rundir:
                    try:
                        qmp.call(RunFiles(Path(str(rundir))).qmp, "quit", timeout=2.0)
                    except qmp.QmpUnavailable as exc:
                        log.debug("qmp quit failed: %s", exc)
                if not process.wait_gone(handle.pid, marker, min(timeout, 3.0)):
                    process.stop(handle.pid, marker, grace=timeout)
        finally:
            if rundir:
                shutil.rmtree(str(rundir), ignore_errors=True)
