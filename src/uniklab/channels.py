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
  channel socket for PORT (OTHER must have that channel and be running).  LOCAL may not
  be one of the image's own ports (the app listens there).  The link names OTHER's
  socket by path, found again by OTHER's name when this instance starts (``start``, a
  restart policy): OTHER stopped and started is joined again at once; OTHER destroyed
  and run anew under the same name, once this instance starts again.

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
both ends speak frames: an 8-byte header ``>BBHI`` = type, pad (0), payload length (0..
``MAX_PAYLOAD``), connection id; then the payload.

* ``OPEN`` (1): the opener (host for "in", guest for "out") starts connection ``id``.
  Ids come from the opener, increasing from 1, never reused on one transport session.
* ``DATA`` (2): payload bytes for ``id``.
* ``EOF`` (3): the sender's socket reached end of stream; the receiver does
  ``shutdown(SHUT_WR)`` on its socket.  When a side has both sent and received EOF the
  connection is over on both sides (each frees it, no further frame).
* ``CLOSE`` (4): the connection is gone (connect refused, reset, error): the receiver
  closes its socket at once and frees ``id``.
Frames for an unknown id are ignored (a CLOSE crossed them).  The guest holds at most 64
connections at once (chan.c's CONN_MAX): an OPEN beyond that is answered with CLOSE.
There is no per-connection flow control: each end stops reading the transport while one
connection's backlog is full, so a stalled reader stalls the other connections of its
channel (bounded memory, no loss).

The host side: one proxy daemon per instance
--------------------------------------------
``python -m uniklab.channel_proxy <rundir>/channels.json`` (pid ``<rundir>/channels.pid``, log
``<rundir>/channels.log``; its command line names the runtime directory, as QEMU's does,
so ``gc`` recognises it).  It connects to each channel's transport socket (QEMU:
``-chardev socket,server=on`` at ``<rundir>/vser-<name>.sock``), serves the public UNIX
sockets, and joins links.  It is the transport's only client, so the guest sees the host
"connected" for as long as the proxy lives.  When a transport ends (QEMU gone) it closes
every connection of that channel (EOF to each client) and, once no transport is left,
removes its sockets and exits; ``destroy`` also stops it.  A peer guest that dies thus
gives the other side EOF: its proxy closes the link's connection, whose proxy sends
CLOSE into the linked guest.

A backend that renders channels over virtio-serial (QEMU's, ``BackendType.channels``): one transport
per channel, reachable on this machine as a UNIX socket that carries the channel's byte
stream (QEMU: the virtserialport's chardev); after the guest starts,
``start_proxy(rundir, spec.channels, transport)`` (``transport(name)`` -> that socket's
path); ``stop_proxy(rundir)`` in ``stop``/``destroy`` before the runtime directory goes;
``ensure_proxy(rundir)`` where it reconciles a live guest (``inspect``), which starts a
killed proxy again (the guest sees its host reconnect: it dropped that channel's
connections and reset its reader when the host went).

The guest side (``guest/chan.c``)
---------------------------------
The init forks one helper process before the app (a fault in it cannot take PID 1 down)
that opens every channel's device and runs the frame protocol with non-blocking sockets
in one poll loop.  Linux's virtio_console reports POLLHUP (and read() = 0) while no host
client is connected: the helper then drops that channel's connections, resets its parser,
and re-checks the device every 200 ms instead of polling it (no spinning).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

from uniklab import daemons, validate
from uniklab.errors import UsageError

log = logging.getLogger(__name__)

HEADER = struct.Struct(">BBHI")  # kind, pad (0), payload length, connection id
# A frame fits one virtio-serial buffer write (the guest driver takes up to 32 KiB a write).
MAX_PAYLOAD = 16384
NAME_PREFIX = "uniklab."
# A transport's (``BackendType.channels``) guest driver, and the kernel option that builds it in.
GUEST_DRIVERS = {
    "virtio-serial": ("virtio_console", "CONFIG_VIRTIO_CONSOLE"),
    "vchan": ("Xen's grant device", "CONFIG_XEN_GNTDEV"),
}
MAX_CHANNELS = 16  # per guest, links included (chan.h's CHAN_MAX)


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
    return HEADER.pack(kind, 0, len(payload), conn) + payload


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
            kind, pad, length, conn = HEADER.unpack_from(self._buf)
            if kind not in Kind.__members__.values() or pad or length > MAX_PAYLOAD:
                raise FrameError(f"bad frame header {bytes(self._buf[: HEADER.size]).hex()}")
            if kind != Kind.DATA and length:
                raise FrameError(f"{Kind(kind).name} frame with a payload")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(Frame(Kind(kind), conn, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return out


# ---------------------------------------------------------------- the host's plan


@dataclass(frozen=True)
class ChannelSpec:
    """One channel of an instance, as backends render it: ``port`` is the guest port
    served ("in") or listened on in the guest ("out", a link whose connections go to the
    UNIX socket ``target``: another instance's channel)."""

    port: int
    dir: Literal["in", "out"] = "in"
    target: str | None = None
    peer: str | None = None  # "out": "OTHER:PORT", whose channel ``target`` is

    @property
    def name(self) -> str:
        """The transport's name of it (virtio-serial port name, vchan name)."""
        return f"{NAME_PREFIX}{self.port}" if self.dir == "in" else f"{NAME_PREFIX}l{self.port}"

    def to_json(self) -> dict[str, object]:
        return {"port": self.port, "dir": self.dir, "target": self.target, "peer": self.peer}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ChannelSpec:
        return cls(
            port=int(d["port"]),
            dir=d.get("dir", "in"),
            target=d.get("target"),
            peer=d.get("peer"),
        )


def socket_path(rundir: Path, port: int) -> Path:
    """The host's UNIX socket of an instance's channel to guest ``port``."""
    return rundir / f"chan-{port}.sock"


def config_path(rundir: Path) -> Path:
    return rundir / "channels.json"


def pid_path(rundir: Path) -> Path:
    return rundir / "channels.pid"


def log_path(rundir: Path) -> Path:
    return rundir / "channels.log"


@dataclass(frozen=True)
class Link:
    """``--link OTHER:PORT[:LOCAL]``: ``127.0.0.1:LOCAL`` in this guest reaches ``PORT`` of
    instance ``other``."""

    other: str
    port: int
    local: int


def parse_link(value: str | Link) -> Link:
    """``OTHER:PORT[:LOCAL]`` (or a ``Link``), checked; a bad one is a one-line UsageError."""
    if isinstance(value, Link):
        value = f"{value.other}:{value.port}:{value.local}"
    if not isinstance(value, str):
        raise UsageError(f"invalid link {validate.short(value)}: OTHER:PORT[:LOCAL]")
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise UsageError(f"invalid link {validate.short(value)}: OTHER:PORT[:LOCAL]")
    other = validate.name(parts[0], "instance name")
    port = validate.port(parts[1], "link port")
    local = validate.port(parts[2], "link local port") if len(parts) == 3 else port
    return Link(other, port, local)


def channel_ports(ports: Sequence[int | str]) -> tuple[int, ...]:
    out = tuple(validate.port(p, "channel port") for p in ports)
    if len(set(out)) != len(out):
        raise UsageError("a channel port is given twice")
    return out


# ---------------------------------------------------------------- starting and stopping
READY_LINE = "uniklab-channels: ready"
PROXY_START_TIMEOUT = 15.0
TRANSPORT_WAIT = 10.0  # for the transport's socket to accept (QEMU made it before)
PROXY_MODULE = "uniklab.channel_proxy"


def proxy_argv(rundir: Path) -> list[str]:
    return [sys.executable, "-m", PROXY_MODULE, str(config_path(rundir))]


def start_proxy(
    rundir: Path, channels: Sequence[ChannelSpec], transport: Callable[[str], Path]
) -> int | None:
    """Start the instance's channel proxy (None without channels); its pid.  It joins each
    channel's ``transport`` socket (``transport(name)``, made by the backend) to its host
    socket or link."""
    if not channels:
        return None
    doc = {
        "channels": [
            {
                **ch.to_json(),
                "name": ch.name,
                "transport": str(transport(ch.name)),
                "listen": str(socket_path(rundir, ch.port)) if ch.dir == "in" else None,
            }
            for ch in channels
        ]
    }
    with locked(rundir):
        config_path(rundir).write_text(json.dumps(doc, indent=1))
        return _spawn(rundir)


@contextlib.contextmanager
def locked(rundir: Path) -> Iterator[None]:
    """One start of an instance's channel plumbing at a time (a start, a reconcile's
    restart): QEMU's proxy here, a Xen host's forward (``uniklab.backends.xen_channels``)."""
    with open(rundir / "channels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _spawn(rundir: Path) -> int:
    log = log_path(rundir)
    seen = log.stat().st_size if log.exists() else 0

    def ready(pid: int) -> bool:
        try:
            with log.open("rb") as f:
                f.seek(seen)
                return READY_LINE.encode() in f.read()
        except OSError:
            return False

    return daemons.spawn(
        proxy_argv(rundir),
        log_path=log,
        pidfile=pid_path(rundir),
        marker=str(config_path(rundir)),
        ready=ready,
        timeout=PROXY_START_TIMEOUT,
    )


def ensure_proxy(rundir: Path) -> int | None:
    """Start the proxy of a running instance again if it died (killed behind uniklab's
    back): the guest sees its host reconnect and serves the channels anew.  None when the
    instance has no channels.  A lock makes two commands reconciling at once start one."""
    config = config_path(rundir)
    if not config.exists():
        return None
    pid = daemons.find(pid_path(rundir), str(config))
    if pid is not None:
        return pid
    with locked(rundir):
        pid = daemons.find(pid_path(rundir), str(config))
        if pid is None and config.exists():
            log.info("channel proxy of %s was gone: starting it again", rundir)
            pid = _spawn(rundir)
        return pid


def stop_proxy(rundir: Path) -> None:
    """Stop the instance's proxy (if it runs) and remove its sockets; safe to call twice."""
    # The config first: ensure_proxy does not start again what is being stopped.
    config_path(rundir).unlink(missing_ok=True)
    daemons.stop(daemons.read_pid(pid_path(rundir)), str(config_path(rundir)), grace=2.0)
    for sock in rundir.glob("chan-*.sock"):
        sock.unlink(missing_ok=True)


def proxy_alive(rundir: Path) -> bool:
    return daemons.find(pid_path(rundir), str(config_path(rundir))) is not None
