"""Facts about a local process from /proc, and stopping one safely.

A pid alone is not an identity (pids are reused), so every check also matches a marker
string (the instance's runtime directory) in the process's command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcInfo:
    uptime: float
    cpu_seconds: float
    rss_bytes: int
    state: str


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


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


def stop(pid: int, marker: str, *, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; no-op if it is not ours."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not matches(pid, marker):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(pid, marker, wait):
            return
