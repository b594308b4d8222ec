"""Fuzz the guest init's base64url decoder (b64.c: how the init reads ``uniklab.config=``
from the kernel command line) under ASan/UBSan against Python's own decoder."""

from __future__ import annotations

import base64
import binascii
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.budget import FUZZ
from tests.fuzz.harness import GUEST, SANITIZE, SANITIZER_ENV, SanitizersUnavailable, build_harness
from uniklab.executor import local

HARNESS_C = Path(__file__).with_name("b64_harness.c")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="


class B64:
    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self.binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=SANITIZER_ENV,
        )

    def decode(self, data: bytes) -> bytes | None:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
            line = self.proc.stdout.readline().decode()
        except BrokenPipeError:
            line = ""
        if not line:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.proc.kill()
            self.proc = self._start()
            raise AssertionError(f"b64 harness died on {data[:80]!r}: {err[-2000:]}")
        return None if line.strip() == "ERR" else bytes.fromhex(line[3:].strip())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def b64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[B64]:
    out = tmp_path_factory.mktemp("b64")
    try:
        build_harness(out)  # checks gcc can build with the sanitizers
    except SanitizersUnavailable as exc:
        pytest.skip(str(exc))
    binary = out / "b64_harness"
    local.run(
        ["gcc", *SANITIZE, "-I", GUEST, "-o", binary, HARNESS_C, GUEST / "b64.c"], timeout=120
    )
    harness = B64(binary)
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
