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
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from uniklab.errors import BakeError
from uniklab.executor import spawn_detached

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


def run_logged(
    argv: list[str],
    *,
    what: str,
    log_path: Path,
    deadline: float,
    cwd: Path | None = None,
    on_output: Callable[[str], None] | None = None,
    tail: int = 12,
) -> None:
    """Run a long build in its own session, its output in ``log_path``; ``on_output`` sees
    each new chunk of output (for progress).  Past ``deadline`` (monotonic) or on failure:
    the whole process group is killed and a BakeError quotes the log's last lines."""
    proc = spawn_detached(argv, log_path=log_path, cwd=cwd)
    seen = 0
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise BakeError(f"{what} timed out (log: {log_path})")
            time.sleep(0.5)
            with open(log_path, "rb") as fh:
                fh.seek(seen)
                chunk = fh.read()
            seen += len(chunk)
            if chunk and on_output:
                on_output(chunk.decode(errors="replace"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()[-tail:]
        raise BakeError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(lines))
