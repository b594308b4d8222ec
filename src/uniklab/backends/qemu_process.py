"""A QEMU that daemonizes out of a runtime directory (pid file, QMP socket, console log):
launch it, know it again, shut it down (QMP ``quit``, SIGTERM, SIGKILL; the directory goes).

The QEMU backend's guests and the virtual Xen host's machine are both such a QEMU.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from collections.abc import Callable, Sequence

from uniklab import daemons
from uniklab.backends import qmp
from uniklab.backends.hostinfo import QEMU
from uniklab.backends.qemu_argv import CONSOLE_CHARDEV, RunFiles
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


def console_in_use(files: RunFiles, *, timeout: float = 3.0) -> bool:
    """Whether a client holds the console socket.  QEMU serves one at a time, and a second
    one's connect still succeeds (into the listen backlog) to hear nothing: QMP tells."""
    try:
        chardevs = qmp.call(files.qmp, "query-chardev", timeout=timeout)
    except QmpUnavailable as exc:
        log.debug("query-chardev failed (taken as free): %s", exc)
        return False
    for dev in chardevs:
        if dev.get("label") == CONSOLE_CHARDEV:
            # "disconnected:unix:PATH,server=on" while nobody is attached
            return not str(dev.get("filename", "")).startswith("disconnected:")
    return False


def shutdown(files: RunFiles, pid: int | None, *, ask_wait: float, grace: float) -> bool:
    """Ask QEMU ``pid`` to quit over QMP and wait ``ask_wait`` seconds, then SIGTERM and
    wait ``grace``, then SIGKILL; the runtime directory is removed in any case.  True
    once it is gone (also when it was not running)."""
    try:
        return end(files, pid, ask=lambda: ask_qmp(files, "quit"), ask_wait=ask_wait, grace=grace)
    finally:
        shutil.rmtree(files.rundir, ignore_errors=True)


def ask_qmp(files: RunFiles, command: str) -> None:
    """A QMP command whose failure only means the next step of an escalation comes."""
    try:
        qmp.call(files.qmp, command, timeout=2.0)
    except QmpUnavailable as exc:
        log.debug("qmp %s failed: %s", command, exc)


def end(
    files: RunFiles, pid: int | None, *, ask: Callable[[], None], ask_wait: float, grace: float
) -> bool:
    """``ask`` QEMU ``pid`` to end and wait ``ask_wait`` seconds, then SIGTERM and wait
    ``grace``, then SIGKILL; the runtime directory (console log) stays."""
    return daemons.stop(pid, marker(files), grace=grace, ask=ask, ask_wait=ask_wait)


def tell_console(
    files: RunFiles,
    line: Callable[[float], bytes],
    *,
    heard: bytes,
    until: Callable[[], bool] | None,
    timeout: float,
    every: float = 1.0,
) -> bool:
    """Write ``line(seconds since the first write)`` to the guest's serial console (its
    socket) until the guest says ``heard``, again ``every`` second (a guest still booting
    loses what reaches its UART before its driver is up); hold the connection until
    ``until()`` or ``timeout`` seconds, reading what the guest prints (the log keeps it):
    QEMU drops what the UART has not taken when the client leaves (``until`` None: leave
    once the guest said ``heard``, it took the line).  True once the guest said
    ``heard``.  While another client holds the console (one at a time), QEMU takes
    nothing from this one."""
    start = time.monotonic()
    said = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(min(timeout, 2.0) or 0.1)
            sock.connect(str(files.console_sock))
            sock.settimeout(0.1)
            sent_at = -every
            done = until or (lambda: heard in said)
            while not done() and (now := time.monotonic() - start) < timeout:
                if heard not in said and now - sent_at >= every:
                    sock.sendall(line(now))
                    sent_at = now
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    continue
                if not got:
                    break  # QEMU closed it: it is ending
                said = (said + got)[-(len(heard) + 65536) :]
    except OSError as exc:
        log.debug("console %s: %s", files.console_sock, exc)
    return heard in said
