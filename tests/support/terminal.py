"""A command run on a real terminal (a pty), for tests of what it does to one: what it
prints, what it makes of keys typed, and the terminal's modes when it is done."""

from __future__ import annotations

import os
import pty
import subprocess
import termios
import time
from collections.abc import Sequence
from types import TracebackType


class Terminal:
    """``argv`` with a pty as its stdin, stdout and stderr; every wait bounded by ``bound``
    seconds.  A context manager: the command is killed on exit if it still runs."""

    def __init__(self, argv: Sequence[str], *, bound: float = 60.0) -> None:
        self.bound = bound
        self.master, self.slave = pty.openpty()
        self.modes = termios.tcgetattr(self.slave)  # as the command found them
        self.seen = b""
        self.proc = subprocess.Popen(
            list(argv), stdin=self.slave, stdout=self.slave, stderr=self.slave
        )

    def expect(self, want: bytes, *, bound: float | None = None) -> bytes:
        """Read what the command prints until ``want`` has come (within ``bound`` seconds,
        else the terminal's)."""
        deadline = time.monotonic() + (self.bound if bound is None else bound)
        while want not in self.seen:
            assert self.proc.poll() is None or self._readable(), self.seen[-500:]
            assert time.monotonic() < deadline, f"never printed {want!r}: {self.seen[-500:]!r}"
            if self._readable(0.1):
                self.seen += os.read(self.master, 4096)
        return self.seen

    def _readable(self, timeout: float = 0.0) -> bool:
        import select

        return bool(select.select([self.master], [], [], timeout)[0])

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def raw(self) -> bool:
        """Whether the terminal is in raw mode now (no line editing, no echo)."""
        lflag = termios.tcgetattr(self.slave)[3]
        return not lflag & (termios.ICANON | termios.ECHO)

    def wait_raw(self) -> None:
        deadline = time.monotonic() + self.bound
        while not self.raw():
            assert time.monotonic() < deadline, "the terminal never went raw"
            time.sleep(0.05)

    def wait(self) -> int:
        return self.proc.wait(self.bound)

    def restored(self) -> bool:
        return termios.tcgetattr(self.slave) == self.modes

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)
