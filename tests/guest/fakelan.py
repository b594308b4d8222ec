"""A scripted Ethernet segment for the guest init's DHCP client, without root.

QEMU's ``dgram`` netdev carries the guest's frames as UDP datagrams on loopback to this
process, which plays a DHCP server: it answers ARP for its own address, records every
DHCP message the guest sends, and replies as the test's handler decides (short leases,
silence, NAKs). It can also ask, by ARP, whether the guest still holds an address.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
MAGIC = bytes([99, 130, 83, 99])
BROADCAST_MAC = b"\xff" * 6
SERVER_MAC = bytes.fromhex("020000000001")
SERVER_IP = "10.0.3.1"
NETMASK = "255.255.255.0"


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _str(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _csum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, _ip(src), _ip(dst))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + udp


def options(opts: dict[int, bytes]) -> bytes:
    return b"".join(bytes([code, len(v)]) + v for code, v in opts.items()) + b"\xff"


def parse_options(raw: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i < len(raw):
        code = raw[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(raw) or i + 2 + raw[i + 1] > len(raw):
            break
        out[code] = raw[i + 2 : i + 2 + raw[i + 1]]
        i += 2 + raw[i + 1]
    return out


@dataclass(frozen=True)
class Message:
    """One DHCP message from the guest, as it crossed the wire."""

    at: float  # time.monotonic() when it arrived
    eth_dst: bytes
    ip_src: str
    ip_dst: str
    xid: int
    flags: int
    ciaddr: str
    chaddr: bytes
    options: dict[int, bytes]

    @property
    def type(self) -> int:
        return self.options.get(53, b"\0")[0]

    def describe(self) -> str:
        names = {DISCOVER: "DISCOVER", REQUEST: "REQUEST"}
        return (
            f"{names.get(self.type, self.type)} {self.ip_src}->{self.ip_dst} "
            f"ciaddr={self.ciaddr} opts={sorted(self.options)}"
        )


@dataclass(frozen=True)
class Reply:
    kind: int  # OFFER, ACK or NAK
    yiaddr: str = "0.0.0.0"
    lease: int | None = None  # seconds (option 51)
    t1: int | None = None  # option 58
    t2: int | None = None  # option 59


Handler = Callable[[Message], Reply | None]


@dataclass
class FakeLan:
    handler: Handler
    messages: list[Message] = field(default_factory=list)
    arp_answers: list[tuple[float, str]] = field(default_factory=list)  # (when, address)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.qemu_port: int = probe.getsockname()[1]
        probe.close()  # QEMU binds it; the window for another taker is tiny
        self.guest_mac = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def netdev(self) -> str:
        """The ``-netdev`` value that puts the guest's NIC on this segment."""
        return (
            f"dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={self.qemu_port},"
            f"remote.type=inet,remote.host=127.0.0.1,remote.port={self.sock.getsockname()[1]}"
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _send(self, frame: bytes) -> None:
        self.sock.sendto(frame, ("127.0.0.1", self.qemu_port))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._frame(frame)
            except Exception as exc:  # a bad frame or handler bug: fail the test, not the thread
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _frame(self, frame: bytes) -> None:
        if len(frame) < 14:
            return
        dst, src, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
        if ethertype == 0x0806:
            self._arp(src, frame[14:])
            return
        ip = frame[14:]
        if ethertype != 0x0800 or len(ip) < 28 or ip[9] != 17:
            return
        ihl = (ip[0] & 0xF) * 4
        sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
        if (sport, dport) != (68, 67):
            return
        b = ip[ihl + 8 :]
        if len(b) < 240 or b[236:240] != MAGIC:
            return
        self.guest_mac = src
        xid, _secs, flags = struct.unpack("!IHH", b[4:12])
        msg = Message(
            time.monotonic(), dst, _str(ip[12:16]), _str(ip[16:20]), xid, flags,
            _str(b[12:16]), b[28:34], parse_options(b[240:]),
        )  # fmt: skip
        self.messages.append(msg)
        reply = self.handler(msg)
        if reply is not None:
            self._reply(msg, reply)

    def _reply(self, req: Message, r: Reply) -> None:
        opts = {53: bytes([r.kind]), 54: _ip(SERVER_IP)}
        if r.kind != NAK:
            opts[1] = _ip(NETMASK)
            opts[3] = _ip(SERVER_IP)
            for code, value in ((51, r.lease), (58, r.t1), (59, r.t2)):
                if value is not None:
                    opts[code] = struct.pack("!I", value)
        bootp = (
            struct.pack("!BBBBIHHIIII", 2, 1, 6, 0, req.xid, 0, req.flags, 0, 0, 0, 0)
            + req.chaddr.ljust(16, b"\0") + b"\0" * 192 + MAGIC + options(opts)
        )  # fmt: skip
        bootp = bootp[:16] + _ip(r.yiaddr) + _ip(SERVER_IP) + bootp[24:]
        # RFC 2131 4.1: to a client that has an address, unicast; otherwise broadcast.
        unicast = req.ciaddr != "0.0.0.0" and r.kind != NAK
        dst_ip = req.ciaddr if unicast else "255.255.255.255"
        eth = (self.guest_mac if unicast else BROADCAST_MAC) + SERVER_MAC + b"\x08\x00"
        self._send(eth + ipv4_udp(SERVER_IP, dst_ip, 67, 68, bootp))

    def _arp(self, src: bytes, arp: bytes) -> None:
        if len(arp) < 28:
            return
        op, spa, tpa = struct.unpack("!6xH6x4s6x4s", arp[:28])
        if op == 1 and _str(tpa) == SERVER_IP:
            self._send(src + SERVER_MAC + b"\x08\x06" + self._arp_body(2, src, spa))
        elif op == 2:
            self.arp_answers.append((time.monotonic(), _str(spa)))

    @staticmethod
    def _arp_body(op: int, tha: bytes, tpa: bytes) -> bytes:
        head = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
        return head + SERVER_MAC + _ip(SERVER_IP) + tha + tpa

    def holds(self, address: str, timeout: float = 2.0) -> bool:
        """Whether the guest answers ARP for ``address`` (so has it configured)."""
        since = time.monotonic()
        who_has = self._arp_body(1, b"\0" * 6, _ip(address))
        deadline = since + timeout
        while time.monotonic() < deadline:
            self._send(BROADCAST_MAC + SERVER_MAC + b"\x08\x06" + who_has)
            time.sleep(0.25)
            if any(at >= since and ip == address for at, ip in self.arp_answers):
                return True
        return False

    def wait_for(self, pred: Callable[[Message], bool], what: str, timeout: float) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in list(self.messages):
                if pred(m):
                    return m
            time.sleep(0.05)
        seen = "\n".join(m.describe() for m in self.messages)
        raise AssertionError(f"no {what} within {timeout}s; the guest sent:\n{seen}")
