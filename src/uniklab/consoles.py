"""A guest's serial console as a stream and as a terminal: a log followed as it grows,
lines out of its chunks, and a terminal joined to a console socket (raw mode; ^] detaches).

The backends give these their files, sockets and commands (QEMU's console.log and
console.sock, ``xl console`` over ssh); no hypervisor syntax here.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import selectors
import socket
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from uniklab.errors import UniklabError

if TYPE_CHECKING:
    from uniklab.backends.base import ConsoleAccess

ESCAPE = b"\x1d"  # Ctrl-]: the escape of telnet, virsh console and xl console
ESCAPE_NAME = "^]"
POLL = 0.1  # seconds between looks at a followed log that did not grow
LINGER = 1.0  # a piped session: seconds of quiet, after stdin ended, that end it
LINGER_MAX = 10.0  # ... and its bound, however chatty the guest
DRAIN = 2.0  # seconds a detach waits for the console to read what was typed before ^]
CHUNK = 65536


def last_lines(text: str, lines: int | None) -> str:
    """The last ``lines`` lines of ``text`` as written, like ``tail -n`` (all with None,
    nothing with 0); an unfinished last line counts as one."""
    if lines is None:
        return text
    cut = len(text) - 1 if text.endswith("\n") else len(text)
    for _ in range(lines):
        cut = text.rfind("\n", 0, cut)
        if cut < 0:
            return text
    return text[cut + 1 :]


def _decoder() -> io.IncrementalNewlineDecoder:
    """Console bytes as ``logs`` reads them: UTF-8 (else U+FFFD), newlines translated
    (the guest's tty writes \\r\\n); a character or a \\r\\n split between two reads
    comes whole with the second."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return io.IncrementalNewlineDecoder(utf8, translate=True)


def decoded(chunks: Generator[bytes, None, None]) -> Generator[str, None, None]:
    """Console bytes as text (see ``_decoder``), chunk by chunk.  Closing this closes
    ``chunks``."""
    decoder = _decoder()
    try:
        for chunk in chunks:
            if text := decoder.decode(chunk):
                yield text
    finally:
        chunks.close()
    if text := decoder.decode(b"", final=True):
        yield text


def lines_of(chunks: Generator[str, None, None]) -> Generator[str, None, None]:
    """Text chunks as lines without their ``\\n``, each once it is whole; an unfinished last
    line comes at the end.  Closing this closes ``chunks``."""
    pending = ""
    try:
        for chunk in chunks:
            pending += chunk
            *whole, pending = pending.split("\n")
            yield from whole
    finally:
        chunks.close()
    if pending:
        yield pending


def follow_file(
    path: Path,
    alive: Callable[[], bool],
    *,
    lines: int | None = None,
    interval: float = POLL,
) -> Generator[str, None, None]:
    """The log's last ``lines`` lines so far (all with None), then what is appended to it,
    as it comes; ends once ``alive()`` says its writer is gone (with what it wrote last).

    "So far" is when this is called, not the first ``next``: what the guest says after
    the call comes, even with ``lines=0``.  The file stays open and only new bytes are
    read: a look every ``interval`` seconds while it does not grow costs a read and the
    ``alive`` check.  A log not there yet is waited for while its writer lives; one
    removed meanwhile (the instance destroyed) is still read to its end."""
    decoder = _decoder()
    head = ""
    try:
        f: io.FileIO | None = io.FileIO(path, "rb")
    except FileNotFoundError:
        f = None
    if f is not None:
        try:
            head = last_lines(decoder.decode(f.readall()), lines)
        except BaseException:
            f.close()
            raise
    return _follow(f, path, head, decoder, alive, interval)


def _follow(
    f: io.FileIO | None,
    path: Path,
    head: str,
    decoder: io.IncrementalNewlineDecoder,
    alive: Callable[[], bool],
    interval: float,
) -> Generator[str, None, None]:
    while f is None:
        try:
            f = io.FileIO(path, "rb")
        except FileNotFoundError:
            if not alive():
                return
            time.sleep(interval)
    with f:
        if head:
            yield head
        gone = False
        while True:
            data = f.read(CHUNK)
            if data:
                if text := decoder.decode(data):
                    yield text
            elif gone:
                break
            elif not alive():
                gone = True  # one more read: what it wrote before it went
            else:
                time.sleep(interval)
        if text := decoder.decode(b"", final=True):
            yield text


# -- a terminal joined to a console socket ---------------------------------------------


def until_escape(data: bytes) -> tuple[bytes, bool]:
    """What of the typed ``data`` goes to the guest, and whether the escape (^]) was
    typed: the bytes before it go, the escape and what follows it do not."""
    head, sep, _ = data.partition(ESCAPE)
    return head, bool(sep)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """``fd``'s terminal in raw mode while the body runs (every key, Ctrl-C included, goes
    to the guest), restored after it whatever happens; yields whether ``fd`` is one."""
    if not os.isatty(fd):
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def join(
    sock: socket.socket,
    stdin: int,
    stdout: int,
    *,
    linger: float = LINGER,
    linger_max: float = LINGER_MAX,
) -> str:
    """Copy ``stdin`` to the console ``sock`` and what the console says to ``stdout``
    until one of: the escape typed ("detached"), the console closed (the guest went:
    "closed"), or stdin ended (a pipe) and the console then said nothing for ``linger``
    seconds, or ``linger_max`` seconds passed ("done")."""
    # poll(2), not epoll: stdin may be a regular file or /dev/null, which epoll refuses.
    sel = selectors.PollSelector()
    try:
        sel.register(sock, selectors.EVENT_READ, "console")
        sel.register(stdin, selectors.EVENT_READ, "stdin")
        quiet_at: float | None = None  # once stdin ended: when quiet ends the session
        end_by = float("inf")
        while True:
            left = None
            if quiet_at is not None:
                left = min(quiet_at, end_by) - time.monotonic()
                if left <= 0:
                    _drain(sock)
                    return "done"
            for key, _ in sel.select(left):
                if key.data == "console":
                    try:
                        data = sock.recv(CHUNK)
                    except ConnectionError:
                        data = b""
                    if not data:
                        return "closed"
                    try:
                        _write_all(stdout, data)
                    except BrokenPipeError:
                        return "done"  # whoever read the output is gone (`| head`)
                    if quiet_at is not None:
                        quiet_at = time.monotonic() + linger
                    continue
                typed = os.read(stdin, CHUNK)
                if not typed:
                    sel.unregister(stdin)
                    quiet_at = time.monotonic() + linger
                    end_by = time.monotonic() + linger_max
                    continue
                send, escaped = until_escape(typed)
                if send:
                    sock.sendall(send)
                if escaped:
                    _drain(sock)
                    return "detached"
    finally:
        sel.close()


def _drain(sock: socket.socket, bound: float = DRAIN) -> None:
    """Wait (``bound`` seconds at most) until the console has read what was sent: QEMU
    reads no more than its UART has room for, and drops what is unread when the client
    goes, so a line typed just before ^] would be lost."""
    import fcntl
    import struct
    import termios

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        unread = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if unread == 0:
            return
        time.sleep(0.01)


def connect(path: Path, *, timeout: float = 5.0) -> socket.socket:
    """A connection to the console socket at ``path`` (blocking once connected)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.settimeout(None)
    except OSError as exc:
        sock.close()
        raise UniklabError(
            f"cannot connect to the console ({path}): {exc.strerror or exc}"
        ) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def attach(access: ConsoleAccess, stdin: int = 0, stdout: int = 1) -> str:
    """Join the terminal (or pipes) at ``stdin``/``stdout`` to a guest's console until it
    ends (see ``join``; "exited N" for a command that attaches by itself)."""
    if access.socket is None:
        from uniklab import executor

        code = executor.hand_over(access.argv)
        return "detached" if code == 0 else f"exited {code}"
    sock = connect(access.socket)
    try:
        with raw_terminal(stdin):
            return join(sock, stdin, stdout)
    finally:
        sock.close()
