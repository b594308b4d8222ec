"""The machine-wide build cache: what takes minutes to make (kernels, apps built from
source) is made once per machine and shared by every UNIKLAB_HOME and test session.

Each entry is built in a ``.tmp-<pid>-…`` directory and renamed into place, so a
half-built entry is never seen; a lock file per key serialises builders of one entry, and
the staging directories of killed builders are swept by the next one.

Long work reports itself through one callback type, ``Progress``; a build counts its units
(objects compiled, lines of output) with ``Counter`` and keeps the count of its last run
(``record_units``), so the next build of the same thing has an estimate (``expected_units``)
and the CLI shows a bar with an ETA where it would otherwise only know the time elapsed.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import platformdirs

from uniklab.errors import BakeError
from uniklab.executor import spawn_detached


class Progress(Protocol):
    """How long work says where it is.  ``step``: what it does now (a new text is a new
    step).  ``done`` of ``total`` units, when the work counts them (``total`` may be an
    estimate, the last build's count; None: unknown); ``detail``: the latest unit (the file
    just compiled).  Plain ``say(step)`` calls are the common case."""

    def __call__(
        self, step: str, /, *, done: int | None = None, total: int | None = None, detail: str = ""
    ) -> None: ...


def quiet(
    step: str, /, *, done: int | None = None, total: int | None = None, detail: str = ""
) -> None:
    """The Progress of nobody listening."""


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


class Counter:
    """Counts a build's units in its output as it comes (``run_logged``'s ``on_output``)
    and reports each change as ``step`` with ``done`` of ``total``: ``unit(line)`` names
    the unit a line stands for (the file compiled), or None; ``phase(line)``, if given,
    names a new step a line starts (a build script's milestones), or None."""

    def __init__(
        self,
        say: Progress,
        step: str,
        unit: Callable[[str], str | None],
        total: int | None,
        phase: Callable[[str], str | None] = lambda _line: None,
    ) -> None:
        self.say, self.step, self.unit, self.total, self.phase = say, step, unit, total, phase
        self.done = 0
        self._partial = ""  # a line cut by the chunk's end, completed by the next chunk
        say(step, done=0, total=total)

    def __call__(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        last = None
        for line in lines:
            step = self.phase(line)
            if step is not None and step != self.step:
                self.step = step
                self.say(step, done=self.done, total=self.total)
            name = self.unit(line)
            if name is not None:
                self.done += 1
                last = name
        if last is not None:
            self.say(self.step, done=self.done, total=self.total, detail=last)


def any_line(line: str) -> str | None:
    """Every line of output is a unit (a build with nothing better to count)."""
    return line.strip()[:80] or None


def _units_file(root: Path, what: str) -> Path:
    return root / ".units" / re.sub(r"[^A-Za-z0-9._-]", "_", what)


def expected_units(root: Path, what: str) -> int | None:
    """How many units the last completed build of ``what`` counted (an estimate for this
    one), or None when this machine has not built it before."""
    try:
        value = int(_units_file(root, what).read_text())
    except (OSError, ValueError):
        return None
    return value if value > 0 else None


def record_units(root: Path, what: str, units: int) -> None:
    """Keep a completed build's count for the next build of ``what`` (best effort)."""
    path = _units_file(root, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_text(f"{units}\n")
        os.replace(tmp, path)
    except OSError:
        pass
