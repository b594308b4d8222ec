"""A QEMU that daemonizes out of a runtime directory (pid file, QMP socket, console log):
launch it, know it again, shut it down (QMP ``quit``, SIGTERM, SIGKILL; the directory goes).

The QEMU backend's guests and the virtual Xen host's machine are both such a QEMU.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence

from uniklab import daemons
from uniklab.backends import qmp
from uniklab.backends.hostinfo import QEMU
from uniklab.backends.qemu_argv import RunFiles
from uniklab.errors import CommandError, LaunchError, QmpUnavailable
from uniklab.executor import Executor, local

log = logging.getLogger(__name__)


def marker(files: RunFiles) -> str:
    """What the command line of this directory's QEMU contains (pids are reused)."""
    return str(files.rundir)


def launch(
    argv: Sequence[str],
    files: RunFiles,
    *,
    timeout: float,
    executor: Executor = local,
    what: str = "",
) -> int:
    """Start a daemonizing QEMU (``argv`` has ``-daemonize`` and ``-pidfile``) in ``files``'
    runtime directory, made here owner-only; returns its pid.  QEMU reports a bad option
    or a bound port before it daemonizes: the ``LaunchError`` then carries its words."""
    files.rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (files.rundir / "argv.json").write_text(json.dumps(list(argv)))
    try:
        pid = daemons.start(argv, files.pidfile, name="QEMU", timeout=timeout, executor=executor)
    except CommandError as exc:
        reason = exc.stderr.strip().splitlines()
        message = (reason[-1] if reason else str(exc)).removeprefix(f"{QEMU}: ")
        raise LaunchError(
            f"QEMU failed to start{what}: {message}", argv=argv, output=exc.stderr
        ) from exc
    # QEMU made its sockets and logs with the caller's umask: make them owner-only.
    for p in files.rundir.iterdir():
        p.chmod(p.lstat().st_mode & 0o700)
    return pid


def pid_of(files: RunFiles, known: int | None) -> int | None:
    """The directory's QEMU: ``known`` (as recorded), else (a start killed before it
    recorded one) the pid file's, if that process is still this directory's."""
    return known or daemons.find(files.pidfile, marker(files))


def running(pid: int | None, files: RunFiles) -> bool:
    return daemons.matches(pid, marker(files))


def console(files: RunFiles) -> str:
    """Everything the guest wrote to its serial console so far ("" before it started)."""
    try:
        return files.console_log.read_text(errors="replace")
    except OSError:
        return ""


def shutdown(files: RunFiles, pid: int | None, *, ask_wait: float, grace: float) -> bool:
    """Ask QEMU ``pid`` to quit over QMP and wait ``ask_wait`` seconds, then SIGTERM and
    wait ``grace``, then SIGKILL; the runtime directory is removed in any case.  True
    once it is gone (also when it was not running)."""

    def quit_() -> None:
        try:
            qmp.call(files.qmp, "quit", timeout=2.0)
        except QmpUnavailable as exc:
            log.debug("qmp quit failed: %s", exc)

    try:
        return daemons.stop(pid, marker(files), grace=grace, ask=quit_, ask_wait=ask_wait)
    finally:
        shutil.rmtree(files.rundir, ignore_errors=True)
