"""The virtual Xen host for a test module: a home copied from the session's image home,
`uniklab lab up` in it (the slow part under TCG, once per module), `lab down` after, and no
QEMU of the lab left behind.  Shared by the Xen backend's module and libvirt's Xen one."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import lab_health
from tests.support.homes import copy_home
from tests.support.leaks import qemu_processes
from uniklab.cli.main import main


@contextlib.contextmanager
def virtual_xen_home(
    image_home: Path,
    name: str,
    *up_args: str,
    before: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """A home (UNIKLAB_HOME while it lasts) with lab ``name`` up, ``lab up`` given
    ``up_args``; ``before`` runs in the home before the lab boots (bakes that are faster
    without the lab's TCG dom0 on the same CPUs)."""
    path = copy_home(image_home, "ukl-x-")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIKLAB_HOME", str(path))
        try:
            if before is not None:
                before(path)
            start = time.monotonic()
            assert main(["lab", "up", "--name", name, *up_args]) == 0
            print(f"lab up {' '.join(up_args)}: {time.monotonic() - start:.1f}s")
            yield path
        finally:
            lab_health.collect(path, name)
            main(["lab", "down", "--name", name])
            left = qemu_processes(str(path))
            for line in left:
                os.kill(int(line.split()[0]), 9)
            shutil.rmtree(path, ignore_errors=True)
            assert left == [], f"the lab's QEMU outlived `lab down`: {left}"


def bake_redis_for_xen(path: Path) -> None:
    """``virtual_xen_home``'s ``before`` for the Xen modules: the rumprun Redis and the
    Linux one that fits 64 MB (``redis-static:xen``), baked before the lab boots: on a fresh
    machine that builds the rumprun toolchains and the Xen kernel profile (minutes), faster
    without the lab's TCG dom0 on the same CPUs."""
    from uniklab.lab import Lab
    from uniklab.paths import Paths

    baker = Lab(Paths(path))
    try:
        baker.bake("rumprun-redis")
        baker.bake("redis-static", tag="xen", kernel="specialised:xen", root="initramfs")
    finally:
        baker.close()


@contextlib.contextmanager
def emptied_after(home: Path) -> Iterator[Path]:
    """``home`` for one test; the instances a failed test left on the lab go after it."""
    from uniklab.lab import Lab
    from uniklab.paths import Paths

    yield home
    cleanup = Lab(Paths(home))
    try:
        for row in cleanup.store.instances():
            with contextlib.suppress(Exception):
                cleanup.destroy(row.name)
    finally:
        cleanup.close()
