"""Channels: a byte stream to a guest's TCP port with no network device at all.

Design (shared by every transport: QEMU's virtio-serial here, Xen's vchan on branch vchan)
=========================================================================================

What the user sees
------------------
* ``uniklab run IMAGE --channel PORT`` (repeatable; API ``channels=[PORT]``): the guest
  gets a channel bound to ``127.0.0.1:PORT`` inside it.  With ``--net none`` (no NIC) the
  channels default to the image's ports, and readiness/``check`` probe over the channel.
* On the host each channel is a UNIX socket ``<rundir>/chan-<PORT>.sock`` (``uniklab
  channel NAME PORT`` prints it).  Any number of clients may connect at once; each
  connection is one TCP connection to ``127.0.0.1:PORT`` in the guest, with EOF carried
  both ways (a client's ``shutdown(SHUT_WR)`` is the guest socket's ``shutdown(SHUT_WR)``,
  and the reverse), and a refused/reset connection in the guest closes the client's.
  ``redis-cli -s``, ``socat`` and redis-py's ``unix_socket_path`` work on it as is.
* ``--link OTHER:PORT[:LOCAL]`` (guest↔guest): inside this guest ``127.0.0.1:LOCAL``
  (default: PORT) listens; each connection to it is joined, on the host, to OTHER's
  channel socket for PORT (OTHER must have that channel).  LOCAL may not be one of the
  image's own ports (the app listens there).

Guest config (``GuestConfig.channels``, the "channels" key of the JSON init.c reads)
-------------------------------------------------------------------------------------
``"channels": [{"name": "uniklab.6379", "port": 6379, "dir": "in"},
               {"name": "uniklab.l16379", "port": 16379, "dir": "out"}]``

* ``name``: the transport's name of the channel, ``[a-z0-9.]{1,31}``: the virtio-serial
  port name (QEMU ``virtserialport,name=``; the guest finds it in
  ``/sys/class/virtio-ports/vport*/name``), or on Xen the channel's vchan (xenstore path
  suffix).  Host channels are ``uniklab.<PORT>``, links ``uniklab.l<LOCAL>``.
* ``dir`` ``"in"``: the host opens connections; the guest connects each to
  ``127.0.0.1:port``.  ``"out"``: the guest listens on ``127.0.0.1:port`` and opens one
  connection over the channel per accepted client; the host side joins it to the link's
  target.

The wire: a framed stream (design (b)), one per channel transport
-----------------------------------------------------------------
A virtio-serial port (like a vchan) is one byte stream with no connection boundaries, so
both ends speak frames: an 8-byte header ``>BxHI`` = type, pad, payload length (0..
``MAX_PAYLOAD``), connection id; then the payload.

* ``OPEN`` (1): the opener (host for "in", guest for "out") starts connection ``id``.
  Ids come from the opener, increasing from 1, never reused on one transport session.
* ``DATA`` (2): payload bytes for ``id``.
* ``EOF`` (3): the sender's socket reached end of stream; the receiver does
  ``shutdown(SHUT_WR)`` on its socket.  When a side has both sent and received EOF the
  connection is over on both sides (each frees it, no further frame).
* ``CLOSE`` (4): the connection is gone (connect refused, reset, error): the receiver
  closes its socket at once and frees ``id``.
Frames for an unknown id are ignored (a CLOSE crossed them).  There is no per-connection
flow control: each end stops reading the transport while one connection's backlog is
full, so a stalled reader stalls the other connections of its channel (bounded memory,
no loss).

The host side: one proxy daemon per instance
--------------------------------------------
``python -m uniklab.channels <rundir>/channels.json`` (pid ``<rundir>/channels.pid``, log
``<rundir>/channels.log``; its command line names the runtime directory, as QEMU's does,
so ``gc`` recognises it).  It connects to each channel's transport socket (QEMU:
``-chardev socket,server=on`` at ``<rundir>/vser-<name>.sock``), serves the public UNIX
sockets, and joins links.  It is the transport's only client, so the guest sees the host
"connected" for as long as the proxy lives.  When a transport ends (QEMU gone) it closes
every connection of that channel (EOF to each client) and, once no transport is left,
removes its sockets and exits; ``destroy`` also stops it.  A peer guest that dies thus
gives the other side EOF: its proxy closes the link's connection, whose proxy sends
CLOSE into the linked guest.

The guest side (``guest/chan.c``)
---------------------------------
The init forks one helper process before the app (a fault in it cannot take PID 1 down)
that opens every channel's device and runs the frame protocol with non-blocking sockets
in one poll loop.  Linux's virtio_console reports POLLHUP (and read() = 0) while no host
client is connected: the helper then drops that channel's connections, resets its parser,
and re-checks the device every 200 ms instead of polling it (no spinning).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct(">BxHI")
# A frame fits one virtio-serial buffer write (the guest driver takes up to 32 KiB a write).
MAX_PAYLOAD = 16384
NAME_PREFIX = "uniklab."


class Kind(IntEnum):
    OPEN = 1
    DATA = 2
    EOF = 3
    CLOSE = 4


@dataclass(frozen=True)
class Frame:
    kind: Kind
    conn: int
    payload: bytes = b""


class FrameError(ValueError):
    """The peer sent something that is not a frame: the transport is unusable."""


def encode(kind: Kind, conn: int, payload: bytes = b"") -> bytes:
    """One frame; ``payload`` longer than ``MAX_PAYLOAD`` is refused (split it first)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload), conn) + payload


def encode_data(conn: int, data: bytes) -> Iterator[bytes]:
    """``data`` as DATA frames of at most ``MAX_PAYLOAD`` bytes each."""
    view = memoryview(data)
    for i in range(0, len(view), MAX_PAYLOAD):
        yield encode(Kind.DATA, conn, bytes(view[i : i + MAX_PAYLOAD]))


class Decoder:
    """Frames out of a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            kind, length, conn = HEADER.unpack_from(self._buf)
            if kind not in Kind.__members__.values() or length > MAX_PAYLOAD:
                raise FrameError(f"bad frame header {bytes(self._buf[: HEADER.size]).hex()}")
            if kind != Kind.DATA and length:
                raise FrameError(f"{Kind(kind).name} frame with a payload")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(Frame(Kind(kind), conn, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return out
