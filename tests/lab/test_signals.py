"""SIGTERM and SIGHUP stop uniklab like Ctrl-C: the mapping, holding them around teardowns,
and the CLI's exit codes (128 + the signal)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click
import pytest

from uniklab import signals
from uniklab.cli.main import cli, main

pytestmark = pytest.mark.usefixtures("signal_defaults")


class Unhandled(Exception):
    """What a signal raises under ``guard``: without uniklab's handlers, a test fails
    instead of the signal's default action killing pytest."""


@contextlib.contextmanager
def guard(*sigs: signal.Signals) -> Iterator[None]:
    def fail(signum: int, _frame: FrameType | None) -> None:
        raise Unhandled(signal.Signals(signum).name)

    previous = {s: signal.signal(s, fail) for s in sigs}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_for_signal() -> None:
    # In short sleeps: the handler runs between them, whichever thread the kernel picked.
    for _ in range(100):
        time.sleep(0.05)
    raise AssertionError("no signal arrived")


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["TERM", "HUP"]
)
def test_terminating_signals_raise_interrupted(sig: signal.Signals, code: int) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt) as err, signals.as_interrupts():
        os.kill(os.getpid(), sig)
        wait_for_signal()
    assert isinstance(err.value, signals.Interrupted)
    assert err.value.signum == sig and str(err.value) == sig.name
    assert signals.exit_code(err.value) == code
    assert signal.getsignal(sig) == before, "restored on the way out"


def test_ctrl_c_is_130() -> None:
    assert signals.exit_code(KeyboardInterrupt()) == 130
    assert signals.exit_code(None) == 130


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals.as_interrupts(take_over=True):
            os.kill(os.getpid(), signal.SIGHUP)  # nohup: nothing happens
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_someone_elses_handler_stays_unless_taken_over() -> None:
    with guard(signal.SIGTERM):
        with pytest.raises(Unhandled), signals.as_interrupts():  # the API, the plugin
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for_signal()
        with pytest.raises(signals.Interrupted), signals.as_interrupts(take_over=True):  # CLI
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for_signal()


def test_nested_keeps_the_outer_handlers() -> None:
    with signals.as_interrupts():
        outer = signal.getsignal(signal.SIGTERM)
        with signals.as_interrupts():
            pass
        assert signal.getsignal(signal.SIGTERM) == outer


def test_deferred_holds_until_the_teardown_is_done() -> None:
    done = []
    with pytest.raises(signals.Interrupted) as err, signals.as_interrupts(), signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        done.append("teardown")
    assert done == ["teardown"]
    assert err.value.signum == signal.SIGTERM, "the first signal held is delivered"


def test_deferred_delivers_even_when_the_teardown_fails() -> None:
    with pytest.raises(signals.Interrupted) as err, signals.as_interrupts(), signals.deferred():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.1)
        raise ValueError("teardown failed")
    assert isinstance(err.value.__context__, ValueError)


def test_deferred_ctrl_c_is_a_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt), signals.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("sig", "code", "message"),
    [
        (signal.SIGTERM, 143, "aborted (SIGTERM)"),
        (signal.SIGHUP, 129, "aborted (SIGHUP)"),
        (signal.SIGINT, 130, "aborted"),
    ],
    ids=["TERM", "HUP", "INT"],
)
def test_cli_exit_code_is_128_plus_the_signal(
    sig: signal.Signals, code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cleaned: list[str] = []

    @click.command("selfkill")
    def selfkill() -> None:
        try:
            os.kill(os.getpid(), sig)
            wait_for_signal()
        finally:
            cleaned.append("cleanup ran")

    cli.add_command(selfkill)
    try:
        with guard(signal.SIGTERM, signal.SIGHUP):
            assert main(["selfkill"]) == code
            restored = signal.getsignal(signal.SIGTERM)
    finally:
        cli.commands.pop("selfkill")
    assert cleaned == ["cleanup ran"]
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert getattr(restored, "__name__", None) == "fail", "main() restores the handlers"


def test_a_forked_child_dies_by_the_signal_not_the_parents_cleanup(tmp_path: Path) -> None:
    """pyroute2 forks a child to work inside a network namespace and stops it with
    SIGTERM: the child must not raise the parent's interrupt (whose cleanup removed the
    network the parent was creating) but die as it would have by default."""
    marker = tmp_path / "cleanup-ran"
    with signals.as_interrupts(take_over=True):
        pid = os.fork()
        if pid == 0:  # the child: wait for SIGTERM; cleanup would leave a marker
            try:
                time.sleep(30)
            except KeyboardInterrupt:
                marker.write_text("x")
            os._exit(3)
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert not marker.exists()
