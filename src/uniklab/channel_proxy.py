"""The host side of an instance's channels: the proxy daemon (see ``uniklab.channels``).

``python -m uniklab.channel_proxy RUNDIR/channels.json``: for each channel, connects to its
transport (QEMU's virtserialport chardev), serves its UNIX socket ("in") or joins the
guest's connections to the link's target socket ("out"), speaking the frames of
``uniklab.channels`` on the transport.  Prints ``READY_LINE`` once every transport is
joined; ends (removing its sockets) when every transport has ended or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniklab.channels import (
    MAX_PAYLOAD,
    READY_LINE,
    TRANSPORT_WAIT,
    Decoder,
    Frame,
    FrameError,
    Kind,
    encode,
    encode_data,
)

READ_CHUNK = MAX_PAYLOAD
DRAIN_HIGH = 1 << 20


@dataclass
class _Conn:
    writer: asyncio.StreamWriter
    sent_eof: bool = False
    got_eof: bool = False


class _Channel:
    """One channel's host side: the transport's frames to and from local connections."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.name = str(doc["name"])
        self.dir = str(doc["dir"])
        self.transport_path = str(doc["transport"])
        self.listen = doc.get("listen")
        self.target = doc.get("target")
        self.conns: dict[int, _Conn] = {}
        self.next_id = 0
        self.tw: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None
        self.pumps: set[asyncio.Task[None]] = set()  # the links' (the loop keeps weak refs)

    async def connect(self) -> asyncio.StreamReader:
        deadline = time.monotonic() + TRANSPORT_WAIT
        while True:
            try:
                reader, self.tw = await asyncio.open_unix_connection(self.transport_path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        if self.listen:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen)
            self.server = await asyncio.start_unix_server(self._accepted, path=self.listen)
        return reader

    def send(self, kind: Kind, conn: int, payload: bytes = b"") -> None:
        if self.tw is None or self.tw.is_closing():
            return
        if kind == Kind.DATA:
            for frame in encode_data(conn, payload):
                self.tw.write(frame)
        else:
            self.tw.write(encode(kind, conn))

    async def _accepted(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.next_id += 1
        conn = self.next_id
        self.conns[conn] = c = _Conn(w)
        self.send(Kind.OPEN, conn)
        await self._pump(conn, c, r)

    async def _pump(self, conn: int, c: _Conn, r: asyncio.StreamReader) -> None:
        """A local connection's bytes into the transport, then its EOF (or CLOSE)."""
        try:
            while data := await r.read(READ_CHUNK):
                self.send(Kind.DATA, conn, data)
                if self.tw is not None:
                    await self.tw.drain()
        except (OSError, asyncio.IncompleteReadError):
            self._drop(conn, tell=True)
            return
        if self.conns.get(conn) is c:
            self.send(Kind.EOF, conn)
            c.sent_eof = True
            self._settle(conn, c)

    def _settle(self, conn: int, c: _Conn) -> None:
        if c.sent_eof and c.got_eof:
            self.conns.pop(conn, None)
            c.writer.close()

    def _drop(self, conn: int, *, tell: bool) -> None:
        c = self.conns.pop(conn, None)
        if c is None:
            return
        if tell:
            self.send(Kind.CLOSE, conn)
        # Closed, not cancelled: its pump then reads EOF and ends on its own.
        c.writer.close()

    async def _open_link(self, conn: int) -> None:
        """The guest opened ``conn`` on a link: join it to the target socket."""
        try:
            r, w = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            self.send(Kind.CLOSE, conn)
            return
        self.conns[conn] = c = _Conn(w)
        self.pumps.add(task := asyncio.create_task(self._pump(conn, c, r)))
        task.add_done_callback(self.pumps.discard)

    async def run(self, reader: asyncio.StreamReader) -> None:
        decoder = Decoder()
        try:
            while data := await reader.read(65536):
                for f in decoder.feed(data):
                    await self._frame(f)
        except (OSError, FrameError) as exc:
            print(f"channel {self.name}: {exc}", flush=True)
        finally:
            # The guest (or QEMU) is gone: every local connection ends.
            for conn in list(self.conns):
                self._drop(conn, tell=False)
            if self.server is not None:
                self.server.close()
            if self.listen:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.listen)
            if self.tw is not None:
                self.tw.close()

    async def _frame(self, f: Frame) -> None:
        c = self.conns.get(f.conn)
        if f.kind == Kind.OPEN:
            if self.dir == "out" and c is None:
                await self._open_link(f.conn)
            else:
                self.send(Kind.CLOSE, f.conn)
        elif c is None:
            return
        elif f.kind == Kind.DATA and not c.got_eof:
            c.writer.write(f.payload)
            if c.writer.transport.get_write_buffer_size() > DRAIN_HIGH:
                with contextlib.suppress(OSError):
                    await c.writer.drain()
        elif f.kind == Kind.EOF:
            c.got_eof = True
            with contextlib.suppress(OSError):
                if c.writer.can_write_eof():
                    c.writer.write_eof()
            self._settle(f.conn, c)
        elif f.kind == Kind.CLOSE:
            self._drop(f.conn, tell=False)


async def _serve(config: Path) -> None:
    doc = json.loads(config.read_text())
    chans = [_Channel(d) for d in doc["channels"]]
    readers = [await ch.connect() for ch in chans]
    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(ch.run(r)) for ch, r in zip(chans, readers, strict=True)]
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: [t.cancel() for t in tasks])
    print(READY_LINE, flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m uniklab.channel_proxy RUNDIR/channels.json", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(Path(argv[0])))
    except OSError as exc:
        print(f"uniklab-channels: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
