"""Fuzz the guest init's DHCP reply parser (net.c: ``parse_reply`` for Ethernet frames,
``parse_bootp`` for what the renewal's UDP socket reads) and the lease it makes of a reply
(``lease_from``: T1/T2 defaults, RFC 2131 4.4.5) under ASan/UBSan, against the reading
written out below."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.guest.harness import GUEST, LengthPrefixedHarness, build_sanitized
from tests.support.budget import FUZZ

pytestmark = pytest.mark.fuzz

HARNESS_C = Path(__file__).with_name("dhcp_harness.c")
MAC = bytes.fromhex("525400123456")
XID = bytes([1, 2, 3, 4])
MAGIC = bytes([99, 130, 83, 99])
INFINITE = 0xFFFFFFFF
MIN_LEASE = 4  # net.c's MIN_LEASE_S
MAX_DNS = 8


class Parser(LengthPrefixedHarness):
    def parse(self, mode: bytes, data: bytes) -> str:
        return self.ask(mode + data)


@pytest.fixture(scope="module")
def parser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parser]:
    binary = build_sanitized(
        tmp_path_factory.mktemp("dhcp"), "dhcp_harness", [HARNESS_C, GUEST / "util.c"]
    )
    p = Parser(binary, "dhcp")
    yield p
    p.close()


# ---- the reading net.c must give ----


def _prefix(mask: bytes) -> int:
    m, p = int.from_bytes(mask, "big"), 0
    while p < 32 and m & 0x80000000:
        p, m = p + 1, (m << 1) & 0xFFFFFFFF
    return p


def expect_bootp(b: bytes) -> str:
    if len(b) < 240 or b[0] != 2 or b[4:8] != XID or b[28:34] != MAC or b[236:240] != MAGIC:
        return "NO"
    kind, server, mask, router, have_mask = 0, bytes(4), bytes(4), bytes(4), 0
    dns: list[bytes] = []
    times = {51: 0, 58: 0, 59: 0}
    i = 240
    while i < len(b):
        code = b[i]
        i += 1
        if code == 0:
            continue
        if code == 255 or i >= len(b) or len(b) - (i + 1) < b[i]:
            break
        v, i = b[i + 1 : i + 1 + b[i]], i + 1 + b[i]
        if code == 53 and v:
            kind = v[0]
        elif code in (1, 3, 54) and len(v) >= 4:
            if code == 1:
                mask, have_mask = v[:4], 1
            elif code == 3:
                router = v[:4]
            else:
                server = v[:4]
        elif code == 6:
            dns += [v[k : k + 4] for k in range(0, len(v) - 3, 4)][: MAX_DNS - len(dns)]
        elif code in times and len(v) >= 4:
            t = int.from_bytes(v[:4], "big")
            times[code] = t or 1 if code == 51 else t
    if kind == 0:
        return "NO"
    lease, t1, t2 = times[51], times[58], times[59]
    # lease_from on a default base: RFC 2131 4.4.5's T1 = 1/2, T2 = 7/8 of the lease.
    total = max(lease or INFINITE, MIN_LEASE)
    r1 = t1 if 0 < t1 < total else total // 2
    r2 = t2 if 0 < t2 < total and t2 >= r1 else total * 7 // 8
    r2 = max(r2, r1)
    prefix = _prefix(mask) if have_mask else 24
    addrs = " ".join(x.hex() for x in (b[16:20], server, mask))
    return (
        f"OK {kind} {addrs} {have_mask} {router.hex()} {','.join(d.hex() for d in dns) or '-'} "
        f"{lease} {t1} {t2} | {prefix} {total} {r1} {r2}"
    )


def expect_frame(f: bytes) -> str:
    if len(f) < 34 or f[12:14] != b"\x08\x00" or f[14] >> 4 != 4:
        return "NO"
    ip = f[14:]
    ihl = (ip[0] & 0xF) * 4
    if ihl < 20 or ihl + 8 > len(ip) or ip[9] != 17 or (ip[6] & 0x3F) or ip[7]:
        return "NO"
    tot = int.from_bytes(ip[2:4], "big")
    if tot < ihl + 8 or tot > len(ip):
        return "NO"
    udp = ip[ihl:]
    ulen = int.from_bytes(udp[4:6], "big")
    if udp[2:4] != b"\x00\x44" or ulen < 8 or ulen > tot - ihl:
        return "NO"
    return expect_bootp(udp[8:ulen])


# ---- inputs ----

KNOWN = [1, 3, 6, 51, 53, 54, 58, 59]
U32 = st.sampled_from([0, 1, 3, 4, 5, 60, 120, 3600, 0x7FFFFFFF, INFINITE - 1, INFINITE])
OPTION = st.one_of(
    st.tuples(st.sampled_from(KNOWN), st.binary(max_size=12)),
    st.tuples(st.sampled_from([51, 58, 59]), U32.map(lambda v: v.to_bytes(4, "big"))),
    st.tuples(st.just(53), st.sampled_from([b"\x02", b"\x05", b"\x06", b"\x00"])),
    st.tuples(st.integers(1, 254), st.binary(max_size=8)),
    st.just((0, b"")),  # pad
)


def _cut(draw: st.DrawFn, data: bytes) -> bytes:
    """Mostly whole; sometimes cut anywhere."""
    return data[: draw(st.integers(0, len(data)))] if draw(st.integers(0, 4)) == 0 else data


@st.composite
def bootp(draw: st.DrawFn) -> bytes:
    opts = b"" if draw(st.integers(0, 5)) == 0 else bytes([53, 1, draw(st.sampled_from([2, 5, 6]))])
    for code, value in draw(st.lists(OPTION, max_size=12)):
        opts += b"\0" if code == 0 else bytes([code, len(value)]) + value
    if draw(st.booleans()):
        opts += b"\xff" + draw(st.binary(max_size=8))
    # One field at most is wrong, so that most messages are ours.
    wrong = draw(st.sampled_from([None, None, None, None, None, "op", "xid", "mac", "magic"]))
    head = bytes([1 if wrong == "op" else 2, 1, 6, 0])
    head += (b"\4\3\2\1" if wrong == "xid" else XID) + bytes(8)
    head += draw(st.binary(min_size=4, max_size=4)) + bytes(8)
    head += (bytes(6) if wrong == "mac" else MAC) + bytes(10) + bytes(192)
    return _cut(draw, head + (bytes(4) if wrong == "magic" else MAGIC) + opts)


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    payload = draw(bootp())
    wrong = draw(
        st.sampled_from(
            [None, None, None, None, "ip options", "ulen", "port", "tot", "frag", "proto", "type"]
        )
    )
    ip_opts = bytes(4 * draw(st.sampled_from([1, 10]))) if wrong == "ip options" else b""
    ihl = 5 + len(ip_opts) // 4
    udp_len = 8 + len(payload) + (draw(st.sampled_from([-1, 1, -8, 100])) if wrong == "ulen" else 0)
    dport = 67 if wrong == "port" else 68
    udp = struct.pack("!HHHH", 67, dport, udp_len & 0xFFFF, 0) + payload
    tot = 4 * ihl + len(udp) + (draw(st.sampled_from([-1, 1, 50])) if wrong == "tot" else 0)
    frag = draw(st.sampled_from([0x2000, 1])) if wrong == "frag" else 0x4000
    proto = 6 if wrong == "proto" else 17
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot & 0xFFFF, 0, frag, 64, proto, 0,
                     bytes(4), bytes(4))  # fmt: skip
    eth = b"\xff" * 6 + bytes(6) + (b"\x86\xdd" if wrong == "type" else b"\x08\x00")
    return _cut(draw, eth + ip + ip_opts + udp)


def _reply(options: bytes) -> bytes:
    head = bytes([2, 1, 6, 0]) + XID + bytes(8) + bytes([10, 0, 3, 15]) + bytes(8)
    return head + MAC + bytes(10) + bytes(192) + MAGIC + options


ACK_2M = _reply(
    bytes([53, 1, 5, 54, 4, 10, 0, 3, 1, 1, 4, 255, 255, 255, 0, 51, 4, 0, 0, 0, 120]) + b"\xff"
)


@FUZZ
@given(bootp())
@example(ACK_2M)
@example(_reply(bytes([53, 1, 5, 51, 4, 0, 0, 0, 0])))  # a lease of 0
@example(_reply(bytes([53, 1, 5, 51, 4, 0, 0, 0, 100, 58, 4, 0, 0, 0, 90, 59, 4, 0, 0, 0, 80])))
@example(_reply(bytes([53, 1, 5, 51, 4, 255, 255, 255, 255])))  # infinite
@example(_reply(bytes([53, 1, 5, 6, 40]) + bytes(40)))  # more servers than MAX_DNS
@example(_reply(bytes([53, 1, 5, 51, 4, 0, 0])))  # an option cut by the end
def test_bootp_reads_as_written(parser: Parser, data: bytes) -> None:
    assert parser.parse(b"B", data) == expect_bootp(data)


@FUZZ
@given(frame())
def test_frame_reads_as_written(parser: Parser, data: bytes) -> None:
    assert parser.parse(b"F", data) == expect_frame(data)


@FUZZ
@given(st.binary(max_size=700), st.sampled_from([b"B", b"F"]))
def test_junk_never_crashes(parser: Parser, data: bytes, mode: bytes) -> None:
    want = expect_bootp(data) if mode == b"B" else expect_frame(data)
    assert parser.parse(mode, data) == want


def test_a_two_minute_lease_renews_at_one_and_rebinds_at_one_and_three_quarters(
    parser: Parser,
) -> None:
    """dnsmasq's shortest lease, without T1/T2 options: RFC 2131's defaults."""
    assert parser.parse(b"B", ACK_2M).endswith("| 24 120 60 105")
