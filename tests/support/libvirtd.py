"""A real libvirt daemon on this machine for the libvirt backend's tests (root).

A pytest plugin (``tests/conftest.py`` loads it): the ``libvirtd`` fixture gives the URI of
the system daemon, started here (virtlogd, then libvirtd) when it does not run already, as
on a machine without systemd, and stopped again if this session started it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

URI = "qemu:///system"
DAEMONS = ("virtlogd", "libvirtd")  # virtlogd first: libvirtd's QEMU logs through it


def _answers() -> bool:
    r = subprocess.run(
        ["virsh", "-c", URI, "version"], capture_output=True, text=True, timeout=30, check=False
    )
    return r.returncode == 0


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[str]:
    missing = [d for d in (*DAEMONS, "virsh") if shutil.which(d) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and libvirt-daemon-system (missing: {', '.join(missing)})")
    started = []
    if not _answers():
        # Not by process name: a daemon that died unreaped still shows as one.  A daemon
        # that already runs refuses a second copy (its pid file is locked): not started.
        for daemon in DAEMONS:
            r = subprocess.run([daemon, "-d"], capture_output=True, timeout=30, check=False)
            if r.returncode == 0:
                started.append(daemon)
    deadline = time.monotonic() + 30
    while not _answers():
        assert time.monotonic() < deadline, "libvirtd did not answer within 30 s"
        time.sleep(0.2)
    yield URI
    for daemon in reversed(started):
        pidfile = Path(f"/run/{daemon}.pid")
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError):
            subprocess.run(["pkill", "-x", daemon], check=False)
