"""A stand-in backend for the plugin's own tests: a host ``redis-server`` per "guest".

It keeps the real Lab (store, labels, forwards, probes, teardown) and replaces only QEMU, so
the plugin's behaviour is tested in a second instead of a TCG boot.  ``install`` patches
``Lab.backend``; ``uninstall`` restores it (in-process pytester runs share the class).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from uniklab.backends.base import Handle, Inspection, InstanceSpec
from uniklab.bake.image import Manifest
from uniklab.lab import Lab

BANNER = "fake-guest: booting\nuniklab-init: exec /bin/redis-server\n"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class FakeBackend:
    name = "qemu"

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def create(self, spec: InstanceSpec) -> Handle:
        spec.rundir.mkdir(parents=True, exist_ok=True)
        console = spec.rundir / "console.log"
        console.write_text(BANNER + f"fake-guest: {spec.name} {spec.memory_mb}M\n")
        port = spec.nics[0].forwards[0][0]
        with console.open("ab") as out:
            proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=spec.rundir,
                start_new_session=True,
            )
        self.procs[proc.pid] = proc
        return Handle(proc.pid, {"rundir": str(spec.rundir), "fake_started": time.time()})

    def inspect(self, handle: Handle, *, net: bool = False) -> Inspection:
        if not _alive(handle.pid):
            return Inspection(False, "gone")
        started = float(str(handle.runtime.get("fake_started", time.time())))
        return Inspection(True, "running", time.time() - started, 0.01, 4 << 20)

    def console(self, handle: Handle) -> str:
        try:
            return (Path(str(handle.runtime["rundir"])) / "console.log").read_text()
        except (OSError, KeyError):
            return ""

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        if handle.pid and _alive(handle.pid):
            os.kill(handle.pid, signal.SIGKILL)
        proc = self.procs.pop(handle.pid or 0, None)
        if proc is not None:
            proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while _alive(handle.pid) and time.monotonic() < deadline:
            time.sleep(0.01)


FAKE = FakeBackend()
BAKES: list[str] = []  # what the test faces baked (Lab.bake_for_tests), in order
_original = Lab.backend
_original_bake = Lab.bake_for_tests


def _backend(
    self: Lab, name: str = "qemu", kernel: Path | None = None, host: str = "local"
) -> FakeBackend:
    return FAKE


def _bake(
    self: Lab, ref: str, *, fast: bool = True, progress: Callable[[str], None] | None = None
) -> Manifest:
    BAKES.append(ref)
    return _original_bake(self, ref, fast=fast, progress=progress)


_depth = [0]  # nested installs (a test, and the pytester session inside it)


def install() -> None:
    _depth[0] += 1
    if _depth[0] == 1:
        BAKES.clear()
        Lab.backend = _backend  # type: ignore[method-assign,assignment]
        Lab.bake_for_tests = _bake  # type: ignore[method-assign]


def uninstall() -> None:
    _depth[0] -= 1
    if _depth[0] == 0:
        Lab.backend = _original  # type: ignore[method-assign]
        Lab.bake_for_tests = _original_bake  # type: ignore[method-assign]


def redis_servers(marker: str) -> list[str]:
    """Fake guests still running whose working directory is under ``marker``."""
    out = []
    for pid in FAKE.procs:
        if _alive(pid):
            out.append(str(pid))
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if "redis-server" in (p / "comm").read_text() and marker in os.readlink(p / "cwd"):
                out.append(p.name)
        except OSError:
            continue
    return sorted(set(out))
