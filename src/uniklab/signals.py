"""Termination signals as interrupts: SIGTERM and SIGHUP stop uniklab the way Ctrl-C does.

A CI job's timeout, ``timeout(1)`` or a closed terminal ends a process with SIGTERM or
SIGHUP, whose default action kills it on the spot: ``run --wait`` would leave its guest
running.  Inside ``as_interrupts`` they raise ``Interrupted``, a ``KeyboardInterrupt``, so
every cleanup path written for Ctrl-C runs for them too; ``deferred`` holds all three around
a teardown so that it runs to its end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a command; each exits with 128 + its number (130, 143, 129)."""

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread was (see ``as_interrupts``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signum_of(exc: BaseException | None) -> int:
    """The signal behind an interrupt: its own for ``Interrupted``, SIGINT for Ctrl-C."""
    return int(getattr(exc, "signum", signal.SIGINT))


def exit_code(exc: BaseException | None) -> int:
    """The shell's code for a command stopped by a signal: 128 + its number."""
    return 128 + signum_of(exc)


# The process whose handlers these are.  A child forked while they are set (pyroute2 forks
# one to work inside a network namespace, and stops it with SIGTERM) inherits them; there a
# signal must do what it would have done by default, not run the parent's cleanup (which
# removed the very network the parent was creating).
_owner = os.getpid()


def _default_in_children(signum: int) -> bool:
    """In a forked child: restore the default action of ``signum`` and take it now."""
    if os.getpid() == _owner:
        return False
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return True


# The signals whose ``Interrupted`` was raised in this ``as_interrupts``: Python swallows an
# exception raised where it cannot propagate (an import lock's weakref callback, a
# ``__del__``), so a signal landing there would be lost; ``raise_pending`` raises it again.
_pending: list[int] = []


def _raise(signum: int, _frame: FrameType | None) -> None:
    if not _default_in_children(signum):
        _pending.append(signum)
        raise Interrupted(signum)


def raise_pending() -> None:
    """Raise the interrupt of a signal that came in this ``as_interrupts`` (again, if it
    was swallowed where it landed): called where a long wait may stop."""
    if _pending:
        raise Interrupted(_pending[0])


def _on_main_thread() -> bool:
    # Python runs signal handlers on the main thread only, and sets them only from there.
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def as_interrupts(*, take_over: bool = False) -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Interrupted`` while the body runs; restored after it.

    Only signals left to their default action (death without cleanup) are changed: one this
    process ignores stays ignored (``nohup``), and a handler someone else set stays unless
    ``take_over`` (the CLI owns its process; the API and the pytest plugin live in others').
    Off the main thread this does nothing.
    """
    if not _on_main_thread():
        yield
        return
    previous: dict[signal.Signals, _Handler] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(signum)
        if current in (signal.SIG_IGN, None, _raise):
            continue  # ignored, set outside Python, or already ours (nested)
        if current != signal.SIG_DFL and not take_over:
            continue
        previous[signum] = signal.signal(signum, _raise)
    global _owner
    _owner = os.getpid()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if previous:
            _pending.clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the body runs (a teardown must not stop half
    way), then deliver the first one held to the handler it would have met, even if the body
    raised: a held SIGTERM still stops the process, once the body is done.  Main thread only.
    """
    if not _on_main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        if not _default_in_children(signum):
            held.append(signum)

    global _owner
    _owner = os.getpid()
    previous: dict[signal.Signals, _Handler] = {}
    for signum in TERMINATING:
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])
