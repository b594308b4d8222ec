"""Fuzz the guest init's control-line reader (ctl.c: how the init hears the host's graceful
stop and a clone's "restored" on the console) under ASan/UBSan against a Python statement
of the protocol."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.guest.harness import GUEST, LengthPrefixedHarness, build_sanitized
from tests.support.budget import FUZZ
from uniklab.guest.console import control_line

pytestmark = pytest.mark.fuzz

HARNESS_C = Path(__file__).with_name("ctl_harness.c")
PREFIX = b"\x1buniklab:"
LINE_MAX = 256
STOP_DEFAULT, STOP_MAX = 10, 86400
TIME_MAX = 999_999_999_999


class Ctl(LengthPrefixedHarness):
    def feed(self, data: bytes, chunk: int) -> list[str]:
        """The words of the chunks (of ``chunk`` bytes, 1-256) that completed a command."""
        return self.ask(bytes([chunk - 1]) + data).split()[1:]


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctl]:
    binary = build_sanitized(
        tmp_path_factory.mktemp("ctl"), "ctl_harness", [HARNESS_C, GUEST / "ctl.c"]
    )
    harness = Ctl(binary, "ctl")
    yield harness
    harness.close()


def _parse(line: bytes) -> str | None:
    """The protocol: the last control word of a line, "S<seconds>", "R<sec>.<nsec>", "U"
    or None."""
    at = line.rfind(PREFIX)
    if at < 0:
        return None
    rest = line[at + len(PREFIX) :]
    if m := re.fullmatch(rb"restored ([0-9]+)\.([0-9]{1,9})", rest):
        sec = int(m.group(1))
        return "U" if sec > TIME_MAX else f"R{sec}.{m.group(2).decode():0<9}"
    m = re.fullmatch(rb"stop(?: ([0-9]+))?", rest)
    if m is None or (m.group(1) is not None and int(m.group(1)) > STOP_MAX):
        return "U"
    return f"S{int(m.group(1)) if m.group(1) is not None else STOP_DEFAULT}"


def _python(data: bytes, chunk: int) -> list[str]:
    out: list[str] = []
    line, overflow = b"", False
    for start in range(0, len(data), chunk):
        last = None
        for b in data[start : start + chunk]:
            if b in b"\r\n":
                word = None if overflow else _parse(line)
                last = word or last
                line, overflow = b"", False
            elif len(line) < LINE_MAX:
                line += bytes([b])
            else:
                overflow = True
        if last:
            out.append(last)
    return out


# Lines mixing the protocol's words with noise, so that commands are common.
WORDS = st.sampled_from(
    [
        *(PREFIX, b"stop", b"restored", b" ", b".", b"10", b"0", b"86401", b"1796027215.4028"),
        *(b"\n", b"\r", b"x", b"\x00", b"\x1b", b"9" * 20, b"0" * 10),
    ]
)
LINES = st.lists(WORDS | st.binary(max_size=8), max_size=60).map(b"".join)


@FUZZ
@given(LINES | st.binary(max_size=700), st.integers(1, 256))
@example(b"\x1buniklab:stop 10\n", 1)
@example(b"\x1buniklab:stop\r\n", 3)
@example(b"typed\x1buniklab:stop 0\n", 256)
@example(b"\x1buniklab:restored\n", 5)
@example(b"\x1buniklab:restored 1796027215.402854123\n", 4)
@example(b"\x1buniklab:restored 1796027215.4\r\n", 256)
@example(b"\x1buniklab:restored 1796027215.4028541234\n", 256)
@example(b"\x1buniklab:restored 1796027215\n", 256)
@example(b"\x1buniklab:restored .5\n", 256)
@example(b"\x1buniklab:restored 5.\n", 256)
@example(b"\x1buniklab:restored 1000000000000.0\n", 256)
@example(b"\x1buniklab:restored 0000000000001796027215.0\n", 256)
@example(b"\x1buniklab:restored  1.0\n", 256)
@example(b"\x1buniklab:stop 86401\n", 2)
@example(b"\x1buniklab:stop " + b"9" * 300 + b"\n", 7)
@example(b"a" * 300 + b"\x1buniklab:stop\n", 16)
def test_reader_hears_what_the_protocol_says(ctl: Ctl, data: bytes, chunk: int) -> None:
    assert ctl.feed(data, chunk) == _python(data, chunk)


@given(st.integers(0, STOP_MAX))
def test_the_hosts_stop_line_is_heard_as_sent(seconds: int) -> None:
    assert _python(control_line("stop", str(seconds)), 256) == [f"S{seconds}"]


@given(st.integers(1, TIME_MAX), st.integers(0, 999_999_999))
def test_the_hosts_restored_line_is_heard_as_sent(sec: int, nsec: int) -> None:
    line = control_line("restored", f"{sec}.{nsec:09d}")
    assert _python(line, 256) == [f"R{sec}.{nsec:09d}"]
