"""Fuzz the guest init's base64url decoder (b64.c: how the init reads ``uniklab.config=``
from the kernel command line) under ASan/UBSan against Python's own decoder."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.guest.harness import GUEST, LengthPrefixedHarness, build_sanitized
from tests.support.budget import FUZZ

pytestmark = pytest.mark.fuzz

HARNESS_C = Path(__file__).with_name("b64_harness.c")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="


class B64(LengthPrefixedHarness):
    def decode(self, data: bytes) -> bytes | None:
        line = self.ask(data)
        return None if line == "ERR" else bytes.fromhex(line[3:].strip())


@pytest.fixture(scope="module")
def b64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B64]:
    binary = build_sanitized(
        tmp_path_factory.mktemp("b64"), "b64_harness", [HARNESS_C, GUEST / "b64.c"]
    )
    harness = B64(binary, "b64")
    yield harness
    harness.close()


def _python(text: bytes) -> bytes | None:
    """What a correct decoder gives: either alphabet, padding optional, nothing else."""
    body = text.rstrip(b"=")
    if len(body) % 4 == 1 or any(chr(c) not in ALPHABET[:-1] for c in body):
        return None
    std = body.replace(b"-", b"+").replace(b"_", b"/")
    try:
        return base64.b64decode(std + b"=" * (-len(std) % 4), validate=True)
    except binascii.Error:
        return None


@FUZZ
@given(st.binary(max_size=2000))
@example(b"")
@example(b"\xff" * 3)
def test_encoded_bytes_decode_to_themselves(b64: B64, data: bytes) -> None:
    enc = base64.urlsafe_b64encode(data)
    assert b64.decode(enc) == data
    assert b64.decode(enc.rstrip(b"=")) == data


@FUZZ
@given(st.text(alphabet=ALPHABET, max_size=200) | st.binary(max_size=200))
@example(b"A")
@example(b"=====")
@example(b"AA\x00A")
def test_any_input_decodes_as_python_does_or_is_refused(b64: B64, text: str | bytes) -> None:
    raw = text.encode() if isinstance(text, str) else text
    assert b64.decode(raw) == _python(raw)
