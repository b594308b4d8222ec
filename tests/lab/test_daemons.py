"""uniklab.daemons: start a daemon and read its pid file, know it by pid and marker, spawn a
foreground one until ready, stop with escalation; and the QEMU launch/shutdown on top."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from uniklab import daemons
from uniklab.backends import qemu_process
from uniklab.backends.qemu_argv import RunFiles
from uniklab.errors import CommandError, LaunchError
from uniklab.executor import Result

# A child that sleeps in its own session, its output detached, its argv naming the pid
# file (the marker), the pid written there before the parent exits: what a daemonizing
# program does.
FORKER = """
import subprocess, sys
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]],
    start_new_session=True,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
if sys.argv[2] == "write":
    open(sys.argv[1], "w").write(f"{child.pid}\\n")
"""
# A process that ignores SIGTERM (only SIGKILL ends it); its argv names the marker.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids to kill after the test, whatever it did."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _forker(pidfile: Path, mode: str = "write") -> list[str]:
    return [sys.executable, "-c", FORKER, str(pidfile), mode]


def test_start_returns_the_pid_of_the_forked_daemon(tmp_path: Path, started: list[int]) -> None:
    pidfile = tmp_path / "d.pid"
    pid = daemons.start(_forker(pidfile), pidfile, name="forker", timeout=30)
    started.append(pid)
    assert daemons.read_pid(pidfile) == pid
    assert daemons.matches(pid, str(pidfile))
    assert daemons.find(pidfile, str(pidfile)) == pid
    assert daemons.find(pidfile, "not-its-marker") is None  # a reused pid is not ours
    info = daemons.info(pid)
    assert info is not None and info.rss_bytes > 0 and info.state in "RS"
    assert (pid, daemons.scan(str(pidfile))[0][1]) in daemons.scan(str(pidfile))
    assert daemons.stop(pid, str(pidfile), grace=5.0)
    assert not daemons.matches(pid, str(pidfile))
    assert daemons.stop(pid, str(pidfile), grace=5.0)  # twice is fine


def test_start_without_a_pid_file_is_a_launch_error(tmp_path: Path, started: list[int]) -> None:
    pidfile = tmp_path / "d.pid"
    with pytest.raises(LaunchError, match=r"^forker started but wrote no pid file$"):
        daemons.start(_forker(pidfile, "no"), pidfile, name="forker", timeout=30)
    started += [pid for pid, _ in daemons.scan(str(pidfile))]


def test_a_failed_start_is_the_command_error() -> None:
    with pytest.raises(CommandError):
        argv = [sys.executable, "-c", "raise SystemExit(3)"]
        daemons.start(argv, Path("/nonexistent"), name="x", timeout=30)


def test_stop_escalates_to_sigkill_and_asks_first(tmp_path: Path, started: list[int]) -> None:
    marker = str(tmp_path / "stubborn")
    log = tmp_path / "log"
    asked: list[int] = []
    pid = daemons.spawn(
        [sys.executable, "-c", STUBBORN, marker],
        log_path=log,
        pidfile=tmp_path / "s.pid",
        marker=marker,
        ready=lambda p: daemons.matches(p, marker),
        timeout=10,
    )
    started.append(pid)
    assert daemons.read_pid(tmp_path / "s.pid") == pid
    assert daemons.stop(pid, marker, grace=0.3, ask=lambda: asked.append(1), ask_wait=0.2)
    assert asked == [1] and not daemons.matches(pid, marker)


def test_stop_leaves_a_process_that_is_not_ours(started: list[int]) -> None:
    assert daemons.stop(os.getpid(), "no process has this in its command line", grace=0.1)
    assert daemons.stop(None, "x", grace=0.1)


def test_spawn_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    marker = str(tmp_path / "never")
    log = tmp_path / "log"
    code = f"import sys, time; print('cannot bind', flush=True); time.sleep(60) # {marker}"
    with pytest.raises(LaunchError) as err:
        daemons.spawn(
            [sys.executable, "-c", code],
            log_path=log,
            pidfile=tmp_path / "n.pid",
            marker=marker,
            ready=lambda _p: False,
            timeout=0.5,
        )
    assert err.value.output == "cannot bind"
    assert not (tmp_path / "n.pid").exists()
    assert daemons.scan(marker) == []


class _Failing:
    name = "local"

    def run(self, argv: Sequence[str | Path], **_kw: object) -> Result:
        raise CommandError(["qemu-system-x86_64"], 1, "qemu-system-x86_64: -m 1: too small\n")


def test_qemu_launch_failure_carries_qemus_words(tmp_path: Path) -> None:
    files = RunFiles(tmp_path / "run")
    with pytest.raises(LaunchError) as err:
        qemu_process.launch(["qemu-system-x86_64"], files, timeout=5, executor=_Failing())
    assert str(err.value) == "QEMU failed to start: -m 1: too small"
    assert err.value.output.startswith("qemu-system-x86_64:")
    assert (files.rundir / "argv.json").is_file()
    assert files.rundir.stat().st_mode & 0o777 == 0o700


def test_qemu_shutdown_without_a_monitor_escalates_and_removes_the_rundir(
    tmp_path: Path, started: list[int]
) -> None:
    files = RunFiles(tmp_path / "run")
    files.rundir.mkdir()
    pid = daemons.spawn(
        [sys.executable, "-c", STUBBORN, str(files.rundir)],
        log_path=tmp_path / "log",
        pidfile=files.pidfile,
        marker=qemu_process.marker(files),
        ready=lambda p: qemu_process.running(p, files),
        timeout=10,
    )
    started.append(pid)
    assert qemu_process.pid_of(files, None) == pid  # from the pid file
    assert qemu_process.shutdown(files, pid, ask_wait=0.1, grace=0.3)
    assert not qemu_process.running(pid, files) and not files.rundir.exists()
    assert qemu_process.shutdown(files, pid, ask_wait=0.1, grace=0.3)  # twice is fine
