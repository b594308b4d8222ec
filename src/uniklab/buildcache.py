"""The machine-wide build cache: what takes minutes to make (kernels, apps built from
source) is made once per machine and shared by every UNIKLAB_HOME and test session.

Each entry is built in a ``.tmp-<pid>-…`` directory and renamed into place, so a
half-built entry is never seen; a lock file per key serialises builders of one entry, and
the staging directories of killed builders are swept by the next one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

Progress = Callable[[str], None]


def root(kind: str, env: str) -> Path:
    """``$env`` if set, else ``user_cache_dir("uniklab")/<kind>``."""
    value = os.environ.get(env)
    base = Path(value) if value else Path(platformdirs.user_cache_dir("uniklab")) / kind
    return base.expanduser()


@contextmanager
def locked(path: Path, say: Progress, what: str) -> Iterator[None]:
    """Hold ``path``'s exclusive lock (saying so if another builder has it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build of {what}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sweep(root: Path) -> None:
    """Remove build directories left by a killed build (their pid is gone)."""
    for path in root.glob(".tmp-*"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def staging(root: Path) -> Path:
    """A fresh build directory under ``root`` (sweep() knows it by its pid)."""
    sweep(root)
    work = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    return work
