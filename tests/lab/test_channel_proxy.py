"""The channel proxy daemon for real, against a peer that speaks the guest's side of the
frames on the transport socket (as QEMU's virtserialport chardev would carry them): many
clients, EOF both ways, CLOSE, links, and its end when the transport ends."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from uniklab import channels, daemons
from uniklab.channels import ChannelSpec, Decoder, Frame, Kind, encode

TIMEOUT = 10.0


class FakeGuest:
    """The guest's end of one channel's transport: a UNIX server the proxy connects to."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.server.settimeout(TIMEOUT)
        self.conn: socket.socket | None = None
        self.decoder = Decoder()
        self.pending: list[Frame] = []

    def accept(self) -> None:
        self.conn, _ = self.server.accept()
        self.conn.settimeout(TIMEOUT)

    def send(self, kind: Kind, conn: int, payload: bytes = b"") -> None:
        assert self.conn is not None
        self.conn.sendall(encode(kind, conn, payload))

    def frame(self) -> Frame:
        assert self.conn is not None
        while not self.pending:
            data = self.conn.recv(65536)
            assert data, "the proxy closed the transport"
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def rundir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ukl-chp-", dir="/tmp") as d:
        yield Path(d)
        channels.stop_proxy(Path(d))


def _start(rundir: Path, specs: list[ChannelSpec]) -> dict[str, FakeGuest]:
    guests = {s.name: FakeGuest(rundir / f"vser-{s.name}.sock") for s in specs}
    accepting = [threading.Thread(target=g.accept) for g in guests.values()]
    for t in accepting:
        t.start()
    channels.start_proxy(rundir, specs, lambda name: rundir / f"vser-{name}.sock")
    for t in accepting:
        t.join(TIMEOUT)
    return guests


def _client(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(str(path))
    return s


def test_clients_eof_and_close(rundir: Path) -> None:
    g = _start(rundir, [ChannelSpec(6379)])["uniklab.6379"]
    path = channels.socket_path(rundir, 6379)
    a, b = _client(path), _client(path)
    opened = [g.frame(), g.frame()]
    assert [f.kind for f in opened] == [Kind.OPEN, Kind.OPEN]
    ida, idb = sorted(f.conn for f in opened)
    assert ida != idb
    # Bytes both ways on two connections at once.
    a.sendall(b"to-a")
    assert g.frame() == Frame(Kind.DATA, ida, b"to-a")
    g.send(Kind.DATA, idb, b"for b")
    g.send(Kind.DATA, ida, b"for a")
    assert b.recv(100) == b"for b" and a.recv(100) == b"for a"
    # A client's half-close is an EOF frame; the guest's answer still arrives, then EOF.
    a.shutdown(socket.SHUT_WR)
    assert g.frame() == Frame(Kind.EOF, ida)
    g.send(Kind.DATA, ida, b"last words")
    g.send(Kind.EOF, ida)
    assert a.recv(100) == b"last words" and a.recv(100) == b""
    # The guest refuses or loses a connection: CLOSE, and the client reads EOF.
    g.send(Kind.CLOSE, idb)
    assert b.recv(100) == b""
    # A large write is cut into frames the guest can take.
    c = _client(path)
    idc = g.frame().conn
    c.sendall(bytes(100_000))
    got = b""
    while len(got) < 100_000:
        f = g.frame()
        assert f.kind == Kind.DATA and f.conn == idc and len(f.payload) <= channels.MAX_PAYLOAD
        got += f.payload
    # The transport ends (QEMU gone): clients read EOF, the proxy removes its socket, ends.
    pid = daemons.read_pid(channels.pid_path(rundir))
    g.close()
    assert c.recv(100) == b""
    assert daemons.wait_gone(pid or 0, str(channels.config_path(rundir)), TIMEOUT)
    assert not path.exists()


def test_link_joins_the_guest_to_a_target_socket(rundir: Path) -> None:
    target = rundir / "target.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(target))
    server.listen(1)
    server.settimeout(TIMEOUT)
    g = _start(rundir, [ChannelSpec(16379, "out", str(target))])["uniklab.l16379"]
    assert not channels.socket_path(rundir, 16379).exists()  # a link serves no socket
    g.send(Kind.OPEN, 1)
    peer, _ = server.accept()
    peer.settimeout(TIMEOUT)
    g.send(Kind.DATA, 1, b"PING\r\n")
    assert peer.recv(100) == b"PING\r\n"
    peer.sendall(b"+PONG\r\n")
    assert g.frame() == Frame(Kind.DATA, 1, b"+PONG\r\n")
    peer.close()  # the linked instance's end goes: the guest hears EOF
    assert g.frame() == Frame(Kind.EOF, 1)
    # A link whose target is gone: the guest's connection is closed at once.
    server.close()
    target.unlink()
    g.send(Kind.OPEN, 2)
    assert g.frame() == Frame(Kind.CLOSE, 2)
    channels.stop_proxy(rundir)
    assert not channels.proxy_alive(rundir)
    g.close()
