"""Local daemons: start one, its pid file, know it again, facts from /proc, stop it.

QEMU (guests and the virtual Xen host), dnsmasq and the time service all run here.  A pid
alone is not an identity (pids are reused), so every check also matches a marker string
(the daemon's runtime directory or log file) in the process's command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from uniklab.errors import LaunchError
from uniklab.executor import Executor, local, spawn_detached

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_KILL_WAIT = 5.0  # after SIGKILL: only an uninterruptible sleep makes this wait


@dataclass(frozen=True)
class ProcInfo:
    uptime: float
    cpu_seconds: float
    rss_bytes: int
    state: str


# ---------------------------------------------------------------- starting


def start(
    argv: Sequence[str], pidfile: Path, *, name: str, timeout: float, executor: Executor = local
) -> int:
    """Run a daemon that forks into the background and writes ``pidfile`` before its
    parent exits (QEMU's ``-daemonize``, dnsmasq); returns its pid.

    Such a daemon reports a bad option or a busy port before it forks, so a failed start
    raises the command's ``CommandError`` (the caller words it); a start that leaves no
    pid file raises ``LaunchError``."""
    executor.run(argv, timeout=timeout)
    pid = read_pid(pidfile)
    if pid is None:
        raise LaunchError(f"{name} started but wrote no pid file", argv=argv)
    return pid


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    pidfile: Path,
    marker: str,
    ready: Callable[[int], bool],
    timeout: float,
) -> int:
    """Start a program that stays in the foreground (socat) in its own session, so it
    outlives the CLI, its output appended to ``log_path``; once ``ready(pid)``, its pid
    goes to ``pidfile``.  One that exits or is not ready within ``timeout`` is stopped,
    and ``LaunchError`` carries the last line of its log."""
    args = [str(a) for a in argv]
    proc = spawn_detached(args, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(proc.pid):
            write_pid(pidfile, proc.pid)
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    stop(proc.pid, marker, grace=2.0)
    proc.wait()
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
    raise LaunchError(f"{args[0]} did not start", argv=args, output=" ".join(tail))


# ---------------------------------------------------------------- pid files


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pid(pidfile: Path, pid: int) -> None:
    pidfile.write_text(f"{pid}\n")


def find(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile``, if that process still runs and is ours (``marker``)."""
    pid = read_pid(pidfile)
    return pid if matches(pid, marker) else None


# ---------------------------------------------------------------- facts from /proc


def matches(pid: int | None, marker: str) -> bool:
    """Is ``pid`` alive and does its command line contain ``marker``?"""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


def scan(*words: str) -> list[tuple[int, str]]:
    """The processes whose command line contains every one of ``words``: (pid, cmdline)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(w in cmd for w in words):
            out.append((int(proc.name), cmd.strip()))
    return out


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def info(pid: int) -> ProcInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    state = fields[0]
    utime, stime = int(fields[11]), int(fields[12])
    start = int(fields[19]) / _CLK_TCK + _boot_time()
    return ProcInfo(
        uptime=max(0.0, time.time() - start),
        cpu_seconds=(utime + stime) / _CLK_TCK,
        rss_bytes=int(statm[1]) * _PAGE,
        state=state,
    )


# ---------------------------------------------------------------- stopping


def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not matches(pid, marker):
            return True
        _reap(pid)
        time.sleep(0.02)
    return not matches(pid, marker)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(
    pid: int | None,
    marker: str,
    *,
    grace: float,
    ask: Callable[[], None] | None = None,
    ask_wait: float = 0.0,
) -> bool:
    """Stop our process ``pid``: ``ask`` it to quit (QMP ``quit``) and wait ``ask_wait``
    seconds, then SIGTERM and wait ``grace``, then SIGKILL.  A process that is not ours
    (or gone) is left alone.  True once it is gone; safe to call twice."""
    if not pid or not matches(pid, marker):
        return True
    if ask is not None:
        try:
            ask()
        except Exception as exc:  # asking is a courtesy: its failure leaves the signals
            # (seen: an import of asyncio cut by a SIGTERM, unusable for the rest of the
            # process, while `run` was cleaning up after that very signal)
            log.info("asking pid %s to quit failed: %s", pid, exc)
        else:
            if wait_gone(pid, marker, ask_wait):
                return True
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, _KILL_WAIT)):
        if not matches(pid, marker):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if wait_gone(pid, marker, wait):
            return True
    return not matches(pid, marker)
