"""Progress of long work on the command line: the one renderer of ``buildcache.Progress``
for the verbs that wait on builds and boots (bake, kernel build, toolchain build, lab up).

On a terminal: rich's live display, transient (the verb's result line follows it): a
spinner, the step, and when the work counts its units against an estimate a bar, the
count and the time left; otherwise the count so far and the time elapsed.

Off a terminal (a CI log, a pipe): one plain line per step, and while a step lasts a line
every ``PLAIN_EVERY`` seconds saying so, with the time elapsed, the count and the time
left when known: not one line per line of ``make``, and never minutes of silence.  A step
is announced once it has lasted ``GRACE`` seconds: instant steps (a cached bake) print
nothing, and a command refused at once still says so in one line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from uniklab.cli import common

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import ProgressColumn

    from uniklab.buildcache import Progress

PLAIN_EVERY = 30.0  # seconds between the plain lines of one step
GRACE = 1.0  # seconds a step lasts before its plain line


@contextmanager
def shown(
    label: str, console: Console | None = None, *, grace: float = GRACE
) -> Iterator[Progress]:
    """A ``Progress`` for the work done inside, shown on ``console`` (standard error)
    under ``label`` ("kernel microvm", "lab xenlab")."""
    console = console if console is not None else common.err
    if console.is_terminal:
        with _Live(label, console) as live:
            yield live
        return
    out = console

    def write(line: str) -> None:
        out.print(line, markup=False, highlight=False)

    plain = Plain(label, write, grace=grace)
    with plain.ticking():
        yield plain


def duration(seconds: float) -> str:
    """``45s``, ``2m30s``, ``1h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Plain:
    """Progress as plain lines through ``write``: a step once it has lasted ``grace``
    seconds of ``clock``, then every ``every`` seconds while it lasts (``tick``, called by
    ``ticking``'s thread, or by a test that moves the clock itself)."""

    def __init__(
        self,
        label: str,
        write: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        every: float = PLAIN_EVERY,
        grace: float = 0.0,
    ) -> None:
        self.label, self.write, self.clock = label, write, clock
        self.every, self.grace = every, grace
        self._lock = threading.Lock()
        self._step: str | None = None
        self._announced = False
        self._since = self._said = clock()
        self._done: int | None = None
        self._total: int | None = None

    def __call__(
        self, step: str, /, *, done: int | None = None, total: int | None = None, detail: str = ""
    ) -> None:
        with self._lock:
            self._done, self._total = done, total
            if step != self._step:
                self._step, self._announced = step, False
                self._since = self._said = self.clock()
            self._tick(self.clock())

    def tick(self) -> None:
        """Announce the step once it lasted ``grace``; then say it goes on, every
        ``every`` seconds."""
        with self._lock:
            self._tick(self.clock())

    def _tick(self, now: float) -> None:
        if self._step is None:
            return
        elapsed = now - self._since
        if not self._announced:
            if elapsed >= self.grace:
                self._announced, self._said = True, now
                self.write(f"{self.label}: {self._step}")
        elif now - self._said >= self.every:
            self._said = now
            count = self._count(elapsed)
            self.write(f"{self.label}: still {self._step}: {duration(elapsed)} elapsed{count}")

    def _count(self, elapsed: float) -> str:
        done, total = self._done, self._total
        if done is None:
            return ""
        if not total:
            return f", {done} so far"
        if done >= total:
            return f", {done} (the last build counted {total})"
        left = f", ~{duration(elapsed * (total - done) / done)} left" if done else ""
        return f", {done} of ~{total}{left}"

    @contextmanager
    def ticking(self, period: float | None = None) -> Iterator[None]:
        """A thread calling ``tick`` every ``period`` seconds (a fraction of ``every``)
        while the body runs."""
        stop = threading.Event()
        wait = period if period is not None else min(0.5, self.every / 4)

        def run() -> None:
            while not stop.wait(wait):
                self.tick()

        thread = threading.Thread(target=run, name="uniklab-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


class _Live:
    """Progress on a terminal: one rich progress task, updated in place."""

    def __init__(self, label: str, console: Console) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.label = label
        bar, time_left = _known_total_columns()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            bar,
            TextColumn("{task.fields[count]}", markup=False),
            TimeElapsedColumn(),
            time_left,
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task(label, total=None, count="")

    def __enter__(self) -> _Live:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(
        self, step: str, /, *, done: int | None = None, total: int | None = None, detail: str = ""
    ) -> None:
        # Past the estimate the bar would sit full with no time left: unknown again.
        known = total if total and done is not None and done < total else None
        count = "" if done is None else (f"{done}/~{total}" if known else f"{done}")
        self.progress.update(
            self.task,
            description=f"{self.label}: {step}" + (f" {detail}" if detail else ""),
            completed=done or 0,
            total=known,
            count=count,
        )


def _known_total_columns() -> tuple[ProgressColumn, ProgressColumn]:
    """rich's bar and time-remaining columns, blank while the total is unknown (no pulsing
    bar, no "-:--:--"): then the spinner and the time elapsed say enough."""
    from rich.console import RenderableType
    from rich.progress import BarColumn, ProgressColumn, Task, TimeRemainingColumn
    from rich.text import Text

    class Bar(ProgressColumn):
        def __init__(self, bar_width: int) -> None:
            super().__init__()
            self.bar = BarColumn(bar_width=bar_width)

        def render(self, task: Task) -> RenderableType:
            return Text("") if task.total is None else self.bar.render(task)

    class TimeLeft(TimeRemainingColumn):
        def render(self, task: Task) -> Text:
            if task.total is None:
                return Text("")
            left = super().render(task)
            return Text(f"~{left.plain} left", style=left.style)

    return Bar(bar_width=24), TimeLeft()
