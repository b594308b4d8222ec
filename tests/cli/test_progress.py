"""Progress of long work: off a terminal a plain line per step and, while a step lasts, a
line every interval (driven here by a clock the test moves: no timing is asserted); on a
terminal rich's live display; builds count their units against the last build's count."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.support.progress import Said
from uniklab import buildcache
from uniklab.cli import progress
from uniklab.kernel import build as kbuild


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_says_each_step_then_every_interval_while_it_lasts() -> None:
    clock, lines = Clock(), []
    say = progress.Plain("kernel microvm", lines.append, clock=clock, every=30)
    say("unpacking linux-source-6.1.tar.xz")
    clock.now += 10
    say.tick()
    say("compiling (make -j2)", done=0, total=200)
    for done in range(1, 50):  # the same step: no line per unit
        say("compiling (make -j2)", done=done, total=200, detail=f"f{done}.o")
    clock.now += 29
    say.tick()
    assert lines == [
        "kernel microvm: unpacking linux-source-6.1.tar.xz",
        "kernel microvm: compiling (make -j2)",
    ]
    clock.now += 1
    say.tick()
    clock.now += 5
    say.tick()  # 5 s after the last line: nothing
    clock.now += 25
    say("compiling (make -j2)", done=98, total=200)
    say.tick()
    assert lines[2:] == [
        # 49 objects in 30 s: 151 more take ~92 s
        "kernel microvm: still compiling (make -j2): 30s elapsed, 49 of ~200, ~1m32s left",
        "kernel microvm: still compiling (make -j2): 1m00s elapsed, 98 of ~200, ~1m02s left",
    ]


@pytest.mark.parametrize(
    "done,total,said",
    [
        (None, None, "lab x: still booting dom0: 45s elapsed"),
        (1234, None, "lab x: still booting dom0: 45s elapsed, 1234 so far"),
        (250, 200, "lab x: still booting dom0: 45s elapsed, 250 (the last build counted 200)"),
    ],
)
def test_plain_without_an_estimate_says_the_time_elapsed(
    done: int | None, total: int | None, said: str
) -> None:
    clock, lines = Clock(), []
    say = progress.Plain("lab x", lines.append, clock=clock, every=30)
    say("booting dom0", done=done, total=total)
    clock.now += 45
    say.tick()
    assert lines == ["lab x: booting dom0", said]


def test_plain_announces_a_step_once_it_lasted_the_grace() -> None:
    """Instant steps print nothing (a cached bake; an input refused at once stays one
    error line); a step that lasts is announced, then said to go on."""
    clock, lines = Clock(), []
    say = progress.Plain("baking redis", lines.append, clock=clock, every=30, grace=1)
    say("resolving inputs")
    clock.now += 0.2
    say("writing the initramfs root")
    clock.now += 0.5
    say.tick()
    assert lines == []
    say("building redis (make)")
    clock.now += 1
    say.tick()
    clock.now += 30
    say.tick()
    assert lines == [
        "baking redis: building redis (make)",
        "baking redis: still building redis (make): 31s elapsed",
    ]


def test_plain_ticks_by_itself_while_the_work_runs() -> None:
    """``ticking``'s thread says the step goes on, without any call from the work."""
    clock, lines, still = Clock(), [], threading.Event()

    def write(line: str) -> None:
        lines.append(line)
        if ": still " in line:
            still.set()

    say = progress.Plain("toolchain rumprun hw", write, clock=clock, every=30)
    with say.ticking(period=0.01):
        say("building the rump kernel")
        clock.now += 31
        assert still.wait(10), lines
    assert lines[-1] == "toolchain rumprun hw: still building the rump kernel: 31s elapsed"


def test_off_a_terminal_the_cli_prints_plain_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, width=400)
    with progress.shown("baking redis", console, grace=0) as say:
        assert isinstance(say, progress.Plain)
        say("resolving inputs")
        say("writing the [bold]initramfs[/bold] root")  # text, not markup
    assert out.getvalue() == (
        "baking redis: resolving inputs\nbaking redis: writing the [bold]initramfs[/bold] root\n"
    )


def test_a_terminal_gets_richs_live_display() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=120)
    with progress.shown("kernel microvm", console) as say:
        assert not isinstance(say, progress.Plain)
        counter = buildcache.Counter(say, "compiling (make -j2)", kbuild.compiled_object, 4)
        counter("  CC      kernel/fork.o\n  CC      kernel/ex")
        counter("it.o\n")
    shown = out.getvalue()
    assert "kernel microvm: compiling (make -j2)" in shown and "kernel/exit.o" in shown
    assert "2/~4" in shown and "━" in shown  # the count against the estimate, a bar
    assert "\x1b[" in shown  # a terminal's display (the live lines are redrawn in place)


def test_counter_counts_units_across_chunks_and_follows_phases() -> None:
    said = Said()
    phases = {">> Rump kernel components built": "building rumprun's app tools"}
    counter = buildcache.Counter(
        said,
        "building the rump kernel",
        lambda line: line.split()[-1] if line.startswith("#   compile") else None,
        3,
        phase=phases.get,
    )
    counter("#   compile  a.o\n#   comp")
    counter("ile  b.o\nnoise\n>> Rump kernel components built\n#   compile  c.o\n")
    assert counter.done == 3
    assert [(h.step, h.done, h.total, h.detail) for h in said.heard] == [
        ("building the rump kernel", 0, 3, ""),
        ("building the rump kernel", 1, 3, "a.o"),
        ("building rumprun's app tools", 2, 3, ""),
        ("building rumprun's app tools", 3, 3, "c.o"),
    ]


def test_the_last_builds_count_is_the_next_estimate(tmp_path: Path) -> None:
    assert buildcache.expected_units(tmp_path, "kernel-microvm") is None
    buildcache.record_units(tmp_path, "kernel-microvm", 1234)
    buildcache.record_units(tmp_path, "kernel-xen", 0)  # counted nothing: no estimate
    assert buildcache.expected_units(tmp_path, "kernel-microvm") == 1234
    assert buildcache.expected_units(tmp_path, "kernel-xen") is None


def test_kernel_make_reports_compiled_objects(tmp_path: Path) -> None:
    """The kernel build's own counting, on a Makefile that prints as kbuild does."""
    src = tmp_path / "linux"
    src.mkdir()
    objects = ["init/main.o", "kernel/fork.o", "mm/slub.o"]
    recipe = "".join(f"\t@echo '  CC      {o}'\n" for o in objects)
    (src / "Makefile").write_text(f"bzImage:\n\t@echo '  HOSTCC  scripts/basic/fixdep'\n{recipe}")
    said = Said()
    deadline = time.monotonic() + 60
    done = kbuild._make_bzimage(src, 2, deadline, tmp_path / "build.log", said, 5)
    assert done == 3
    assert said.heard[0].done == 0 and said.heard[0].total == 5
    assert said.heard[-1].done == 3 and said.heard[-1].detail == "mm/slub.o"
