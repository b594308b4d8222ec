"""The default run path works for a user without root: user-mode networking, ports on
127.0.0.1, no /dev/kvm; and what needs root says so in one line.

The child drops to uid/gid 65534 after fork, keeping the already-imported Python (the
interpreter may live under a root-only home), and drives the real Lab API.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (imported lazily by sockets; the child cannot read it)
import importlib
import multiprocessing
import os
import pkgutil
import shutil
from pathlib import Path

import pytest
import redis

from uniklab.errors import UsageError
from uniklab.lab import Lab, RunOptions
from uniklab.net.service import NetworkSpec
from uniklab.paths import Paths

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NOBODY = 65534


def _as_nobody(home: str, queue: multiprocessing.Queue[str]) -> None:
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        os.environ.pop("UNIKLAB_ACCEL", None)
        lab = Lab(Paths(Path(home)))
        try:
            lab.networks.create(NetworkSpec("lab", "10.78.0.0/24"))
            queue.put("net create did not refuse")
            return
        except UsageError as exc:
            if "needs root" not in str(exc):
                queue.put(f"wrong error: {exc}")
                return
        view = lab.run("redis", RunOptions(name="mine", memory="128M"))
        port = view.forwards[0][0]
        r = redis.Redis("127.0.0.1", port, socket_timeout=5)
        assert r.set("who", "nobody") and r.get("who") == b"nobody"
        accel = view.row.runtime.get("accel")
        lab.destroy("mine")
        queue.put(f"ok accel={accel}")
    except BaseException as exc:  # report anything to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def _import_everything() -> None:
    """The child cannot read the venv (it may sit in a root-only directory): uniklab's
    modules, which load lazily, are imported here first, with what they import."""
    import uniklab

    for mod in pkgutil.walk_packages(uniklab.__path__, "uniklab."):
        if not mod.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(mod.name)


def test_run_as_nobody(image_home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    _import_everything()
    home = Path("/tmp") / f"ukl-nobody-{os.getpid()}"
    shutil.copytree(image_home, home, ignore=shutil.ignore_patterns("cache", "run"))
    (home / "state.db-wal").unlink(missing_ok=True)
    for path in [home, *home.rglob("*")]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_as_nobody, args=(str(home), queue))
    child.start()
    child.join(180)
    try:
        assert not child.is_alive(), "child hung"
        result = queue.get(timeout=5)
        assert result.startswith("ok"), result
        assert "accel=tcg" in result  # nobody cannot open /dev/kvm
        assert list((home / "run").iterdir()) == []
    finally:
        if child.is_alive():
            child.kill()
        shutil.rmtree(home, ignore_errors=True)
