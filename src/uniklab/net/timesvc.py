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

import contextlib
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from uniklab import daemons
from uniklab.errors import LaunchError
from uniklab.net import netns as ns

log = logging.getLogger(__name__)

PORT = 37
SOCAT = "socat"
_START_TIMEOUT = 3.0
_TCP_LISTEN = "0A"  # st in /proc/net/tcp


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
        # Errors and warnings only: at -d -d socat logs ~900 bytes per connection (every
        # guest's boot), into a file that lives as long as the network.
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
    try:
        return daemons.spawn(
            ns.exec_prefix(netns) + build_argv(address, files),
            log_path=files.log,
            pidfile=files.pidfile,
            marker=str(files.log),
            ready=lambda pid: listening(pid, address),
            timeout=_START_TIMEOUT,
        )
    except LaunchError as exc:
        log.warning("time service on %s:%d did not start: %s", address, PORT, exc.output)
        return None


def listening(pid: int, address: str) -> bool:
    """Is process ``pid`` listening on ``address``:PORT?  /proc/PID/net/tcp lists the
    sockets of PID's network namespace (no need to enter it); the socket must be one of
    PID's own descriptors, not an older server's."""
    # The kernel prints the address as the native-endian u32 of the network-order bytes.
    local = f"{int.from_bytes(socket.inet_aton(address), sys.byteorder):08X}:{PORT:04X}"
    try:
        rows = [ln.split() for ln in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]]
        inodes = {f"socket:[{f[9]}]" for f in rows if f[1] == local and f[3] == _TCP_LISTEN}
        for fd in os.listdir(f"/proc/{pid}/fd") if inodes else []:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
    except OSError:
        pass
    return False


def pid_of(files: TimeFiles) -> int | None:
    return daemons.read_pid(files.pidfile)


def running(files: TimeFiles) -> bool:
    return daemons.matches(pid_of(files), str(files.log))


def stop(pid: int | None, files: TimeFiles) -> None:
    daemons.stop(pid or pid_of(files), str(files.log), grace=2.0)
    files.pidfile.unlink(missing_ok=True)
