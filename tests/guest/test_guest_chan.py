"""Fuzz the guest init's channel frame reader (chan.c: the frames of uniklab.channels read
from a virtio-serial port) under ASan/UBSan against the host's Python decoder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.guest.harness import GUEST, LengthPrefixedHarness, build_sanitized
from tests.support.budget import FUZZ
from uniklab.channels import MAX_PAYLOAD, Decoder, FrameError, Kind, encode

pytestmark = pytest.mark.fuzz

HARNESS_C = Path(__file__).with_name("chan_harness.c")


class Chan(LengthPrefixedHarness):
    def feed(self, data: bytes, chunk: int) -> list[str]:
        """The frames read from ``data`` fed in chunks of ``chunk`` bytes (1-256)."""
        return self.ask(bytes([chunk - 1]) + data).split()[1:]


@pytest.fixture(scope="module")
def chan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chan]:
    sources = [HARNESS_C, GUEST / "chan.c", GUEST / "util.c", GUEST / "json.c"]
    binary = build_sanitized(tmp_path_factory.mktemp("chan"), "chan_harness", sources)
    harness = Chan(binary, "chan")
    yield harness
    harness.close()


def _python(data: bytes) -> list[str]:
    """The host's decoder, fed a byte at a time: the same frames, whatever the chunking."""
    out: list[str] = []
    d = Decoder()
    for i in range(len(data)):
        try:
            frames = d.feed(data[i : i + 1])
        except FrameError:
            return [*out, "E"]
        out += [f"K{f.kind}:{f.conn}:{f.payload.hex()}" for f in frames]
    return out


CONNS = st.sampled_from([0, 1, 2, 0xFFFFFFFF])
FRAMES = st.one_of(
    st.builds(lambda c, p: encode(Kind.DATA, c, p), CONNS, st.binary(max_size=64)),
    st.builds(encode, st.sampled_from([Kind.OPEN, Kind.EOF, Kind.CLOSE]), CONNS),
)
# Mostly well-formed streams, with noise spliced in so that bad headers are common too.
STREAMS = st.lists(FRAMES | st.binary(max_size=10), max_size=30).map(b"".join)


@FUZZ
@given(STREAMS | st.binary(max_size=700), st.integers(1, 256))
@example(encode(Kind.OPEN, 1) + encode(Kind.DATA, 1, b"PING\r\n") + encode(Kind.EOF, 1), 1)
@example(encode(Kind.DATA, 7, b"x" * 300), 3)
@example(encode(Kind.DATA, 1, b""), 8)
@example(b"\x05\x00\x00\x00\x00\x00\x00\x01", 256)  # unknown kind
@example(b"\x02\x01\x00\x00\x00\x00\x00\x01", 2)  # pad not zero
@example(b"\x01\x00\x00\x01\x00\x00\x00\x01x", 4)  # OPEN with a payload
@example(b"\x02\x00\x40\x01\x00\x00\x00\x01", 5)  # DATA longer than MAX_PAYLOAD
def test_reader_reads_what_the_host_writes(chan: Chan, data: bytes, chunk: int) -> None:
    assert chan.feed(data, chunk) == _python(data)


def test_largest_frame(chan: Chan) -> None:
    payload = bytes(range(256)) * (MAX_PAYLOAD // 256)
    data = encode(Kind.DATA, 3, payload) * 2
    assert chan.feed(data, 256) == _python(data) == [f"K2:3:{payload.hex()}"] * 2
