"""The host's clock for the guests of one bridged network.

A guest under TCG cannot learn the time to the millisecond from the emulated RTC (it
ticks in whole seconds with a phase set by QEMU's start).  On user-mode networking QEMU's
``guestfwd`` runs ``date`` per connection; on a managed bridge, ``socat`` does the same on
the gateway address, TCP port 37: each connection gets one line, ``SECONDS.NANOS``,
which the guest init reads and corrects by half the round trip.  It runs beside the
network's dnsmasq (in its namespace), is found again by its pid file and the network's
runtime directory in its command line, and goes with the network.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from uniklab.backends import process
from uniklab.executor import spawn_detached
from uniklab.net import netns as ns

log = logging.getLogger(__name__)

PORT = 37
SOCAT = "socat"
_START_TIMEOUT = 3.0


@dataclass(frozen=True)
class TimeFiles:
    rundir: Path

    @property
    def pidfile(self) -> Path:
        return self.rundir / "timesvc.pid"

    @property
    def log(self) -> Path:
        return self.rundir / "timesvc.log"


def build_argv(address: str, files: TimeFiles) -> list[str]:
    return [
        SOCAT,
        "-d",
        "-d",
        "-lf",
        str(files.log),  # also the marker that identifies the process
        f"TCP4-LISTEN:{PORT},bind={address},reuseaddr,fork",
        "EXEC:date +%s.%N",  # socat splits EXEC's words itself: no shell
    ]


def start(address: str, files: TimeFiles, netns: str | None) -> int | None:
    """Start the service; its pid, or None (with a warning) where it cannot run: the
    guests then keep the RTC's time."""
    if shutil.which(SOCAT) is None:
        log.warning("socat not found: guests on this network take their clock from the RTC")
        return None
    files.rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.log.write_text("")
    proc = spawn_detached(ns.exec_prefix(netns) + build_argv(address, files), log_path=files.log)
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        text = files.log.read_text(errors="replace")
        if "listening on" in text:
            files.pidfile.write_text(f"{proc.pid}\n")
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    stop(proc.pid, files)
    proc.wait()
    tail = files.log.read_text(errors="replace").strip().splitlines()[-1:]
    log.warning("time service on %s:%d did not start: %s", address, PORT, " ".join(tail))
    return None


def pid_of(files: TimeFiles) -> int | None:
    try:
        return int(files.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def running(files: TimeFiles) -> bool:
    return process.matches(pid_of(files), str(files.log))


def stop(pid: int | None, files: TimeFiles) -> None:
    pid = pid or pid_of(files)
    if pid:
        process.stop(pid, str(files.log), grace=2.0)
    files.pidfile.unlink(missing_ok=True)
