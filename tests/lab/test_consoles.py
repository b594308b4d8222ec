"""The console as a stream and as a terminal (uniklab.consoles), without a guest: a real
log file followed while a writer appends to it and then goes, lines and characters split
between reads, and a session joined to a real socket and pipes (the ^] escape, a piped
stdin that ends, a console that closes)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from uniklab import consoles

FAST = 0.01  # seconds between looks at a log: these tests wait on data, not on time
BOUND = 2000  # looks before a test's writer is taken for gone (20 s): no wait unbounded


class Writer:
    """The process writing a console log (QEMU): alive until ``go``, a bounded number of
    looks at most."""

    def __init__(self) -> None:
        self.gone = False
        self.looks = 0

    def alive(self) -> bool:
        self.looks += 1
        return not self.gone and self.looks < BOUND


@pytest.mark.parametrize(
    "text,n,want",
    [
        ("a\nb\nc\n", 2, "b\nc\n"),
        ("a\nb\nc", 2, "b\nc"),  # an unfinished line counts
        ("a\nb\n", 5, "a\nb\n"),
        ("a\nb\n", 0, ""),
        ("a\nb\n", None, "a\nb\n"),
        ("", 3, ""),
        ("\n\n", 1, "\n"),
    ],
)
def test_last_lines_is_tail_n(text: str, n: int | None, want: str) -> None:
    assert consoles.last_lines(text, n) == want


def _gen(items: list[bytes]) -> Iterator[bytes]:
    yield from items


def test_decoded_joins_what_reads_split() -> None:
    # "é" (two bytes) and "\r\n" each split between two reads; a stray byte is U+FFFD.
    chunks = [b"caf\xc3", b"\xa9 ok\r", b"\nnext\xff\r\n"]
    assert "".join(consoles.decoded(_gen(chunks))) == "café ok\nnext\ufffd\n"  # type: ignore[arg-type]


def test_lines_of_yields_whole_lines_then_the_rest() -> None:
    def chunks() -> Iterator[str]:
        yield from ["one\ntw", "o\n", "", "\nthr", "ee"]

    assert list(consoles.lines_of(chunks())) == ["one", "two", "", "three"]  # type: ignore[arg-type]


def test_closing_lines_closes_the_source() -> None:
    closed = []

    def source() -> Iterator[str]:
        try:
            yield from ["a\n", "b\n", "c\n"]
        finally:
            closed.append(True)

    lines = consoles.lines_of(source())  # type: ignore[arg-type]
    assert next(lines) == "a"
    lines.close()
    assert closed == [True]


def _follow(path: Path, writer: Writer, lines: int | None = None) -> Iterator[str]:
    return consoles.follow_file(path, writer.alive, lines=lines, interval=FAST)


def test_follow_reads_what_is_appended_until_the_writer_goes(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"boot 1\r\nboot 2\r\nboot 3\r\n")
    writer = Writer()
    chunks = _follow(log, writer, lines=2)
    assert next(chunks) == "boot 2\nboot 3\n"  # the tail so far, newlines as `logs` has them
    with log.open("ab", buffering=0) as out:
        out.write(b"ready\r\n")
        assert next(chunks) == "ready\n"
        out.write(b"half a li")
        assert next(chunks) == "half a li"
        out.write(b"ne\r\nlast words\r\n")
        writer.gone = True  # what it wrote before going still comes
    assert "".join(chunks) == "ne\nlast words\n"
    assert writer.looks < BOUND


def test_follow_from_now_on(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"old\n")
    writer = Writer()
    chunks = _follow(log, writer, lines=0)
    with log.open("ab", buffering=0) as out:
        out.write(b"new\n")
        assert next(chunks) == "new\n"
    writer.gone = True
    assert list(chunks) == []


def test_follow_reads_on_after_the_log_is_removed(tmp_path: Path) -> None:
    """A destroyed instance's directory goes while its QEMU still writes to the open log:
    the open file is read to its end."""
    log = tmp_path / "console.log"
    writer = Writer()
    with log.open("ab", buffering=0) as out:
        out.write(b"before\n")
        chunks = _follow(log, writer)
        assert next(chunks) == "before\n"
        log.unlink()
        out.write(b"after\n")
        writer.gone = True
    assert list(chunks) == ["after\n"]


def test_follow_waits_for_a_log_while_its_writer_lives(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    writer = Writer()
    created = []

    def alive() -> bool:
        if writer.looks == 3:
            log.write_bytes(b"first\n")  # the hypervisor made it meanwhile
            created.append(True)
        return writer.alive()

    chunks = consoles.follow_file(log, alive, interval=FAST)
    assert next(chunks) == "first\n" and created
    writer.gone = True
    assert list(chunks) == []


def test_follow_of_a_log_that_never_came(tmp_path: Path) -> None:
    gone = Writer()
    gone.gone = True
    assert list(_follow(tmp_path / "none.log", gone)) == []


# -- a terminal joined to a console socket ------------------------------------------------


@pytest.mark.parametrize(
    "typed,want",
    [
        (b"ls\r", (b"ls\r", False)),
        (b"\x1d", (b"", True)),
        (b"bye\x1dnot sent", (b"bye", True)),
        (b"\x03\x1b[A", (b"\x03\x1b[A", False)),  # Ctrl-C and arrows go to the guest
        (b"", (b"", False)),
    ],
)
def test_until_escape(typed: bytes, want: tuple[bytes, bool]) -> None:
    assert consoles.until_escape(typed) == want


class Session:
    """``join`` between a socket pair (the guest's end here) and two pipes, in a thread
    with a bounded wait."""

    def __init__(self, **kwargs: float) -> None:
        self.guest, mine = socket.socketpair()
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        self.result: list[str] = []
        self.stdin_open = True

        def run() -> None:
            try:
                self.result.append(consoles.join(mine, self.stdin_r, self.stdout_w, **kwargs))
            finally:
                mine.close()
                os.close(self.stdout_w)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def type(self, data: bytes) -> None:
        os.write(self.stdin_w, data)

    def end_stdin(self) -> None:
        os.close(self.stdin_w)
        self.stdin_open = False

    def guest_reads(self, n: int) -> bytes:
        self.guest.settimeout(20)
        got = b""
        while len(got) < n:
            more = self.guest.recv(n - len(got))
            assert more, got
            got += more
        return got

    def outcome(self) -> tuple[str, bytes]:
        self.thread.join(20)
        assert not self.thread.is_alive(), "join did not end"
        out = b""
        while data := os.read(self.stdout_r, 4096):
            out += data
        os.close(self.stdout_r)
        self.guest.close()
        if self.stdin_open:
            self.end_stdin()
        os.close(self.stdin_r)
        return self.result[0], out


def test_escape_detaches_after_sending_what_came_before() -> None:
    s = Session()
    s.guest.sendall(b"login: ")
    s.type(b"root\r")
    assert s.guest_reads(5) == b"root\r"
    s.type(b"x\x1dnever sent")
    assert s.guest_reads(1) == b"x"
    how, out = s.outcome()
    assert how == "detached" and out == b"login: "


def test_piped_stdin_ends_and_the_output_is_printed_until_quiet() -> None:
    s = Session(linger=0.2)
    s.type(b"echo hi\n")
    s.end_stdin()
    assert s.guest_reads(8) == b"echo hi\n"
    s.guest.sendall(b"hi\r\n")
    how, out = s.outcome()
    assert how == "done" and out == b"hi\r\n"


def test_a_chatty_guest_still_ends_a_piped_session() -> None:
    s = Session(linger=5.0, linger_max=0.3)
    s.end_stdin()
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            try:
                s.guest.sendall(b".")
            except OSError:
                return
            stop.wait(0.01)

    t = threading.Thread(target=chatter, daemon=True)
    t.start()
    try:
        how, out = s.outcome()
    finally:
        stop.set()
        t.join(5)
    assert how == "done" and out.startswith(b".")


def test_the_console_closing_ends_the_session() -> None:
    s = Session()
    s.guest.sendall(b"reboot: Power down\r\n")
    s.guest.shutdown(socket.SHUT_RDWR)
    how, out = s.outcome()
    assert how == "closed" and out == b"reboot: Power down\r\n"


def test_raw_terminal_off_a_terminal_does_nothing(tmp_path: Path) -> None:
    with (tmp_path / "f").open("w") as f, consoles.raw_terminal(f.fileno()) as raw:
        assert raw is False


def test_raw_terminal_is_restored_even_on_error() -> None:
    import pty
    import termios

    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError), consoles.raw_terminal(slave) as raw:
            assert raw is True
            assert termios.tcgetattr(slave)[3] & termios.ECHO == 0  # raw: no echo
            raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
