"""Fuzzing the guest init's JSON reader (src/uniklab/guest/json.c) under ASan and UBSan.

Every input, generated or junk, goes through the same differential check: json.c must
give what Python's json gives (see ``oracle.py`` for the subset it refuses on purpose),
and must never crash, trip a sanitizer, leak or hang.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.guest.harness import Answer, JsonHarness, describe, run_once
from tests.guest.oracle import INT_MAX, INT_MIN, MAX_DEPTH, expect, python_accepts
from tests.support.budget import FUZZ

pytestmark = pytest.mark.fuzz


@dataclass(frozen=True)
class Members:
    """An object as written: members in order, duplicate names allowed."""

    pairs: tuple[tuple[str, Value], ...]


Value: TypeAlias = bool | int | float | str | list["Value"] | Members | None

# ---- strategies ----

INT_BOUNDS = [INT_MIN, INT_MIN + 1, INT_MIN - 1, INT_MAX, INT_MAX - 1, INT_MAX + 1, 0, -1]
# NUL and lone surrogates are refused on purpose; test_refused_features covers them.
CHARS = st.characters(codec="utf-8", exclude_characters="\0")
STRINGS = st.text(CHARS, max_size=12) | st.sampled_from(
    ["", '"', "\\", "/", "\x7f", "\x1f", "é", "\u2028", "\uffff", "😀", "\U0010ffff"]
)
KEYS = STRINGS | st.sampled_from(["a", "b", ""])  # small pool: duplicate names
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(INT_BOUNDS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | STRINGS
)
VALUES: st.SearchStrategy[Value] = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.lists(st.tuples(KEYS, kids), max_size=4).map(lambda p: Members(tuple(p)))
    ),
    max_leaves=25,
)

SHORT_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
    "\t": "\\t",
}  # fmt: skip
SPACES = st.sampled_from(["", " ", "\n", "\t", "\r\n", "  \t"])


class Renderer:
    """Writes a value as JSON text, drawing the spacing, escapes and number forms."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.spacing = draw(st.sampled_from(["compact", "spaced", "random"]))
        self.escaping = draw(st.sampled_from(["minimal", "ascii", "random"]))

    def ws(self) -> str:
        if self.spacing == "compact":
            return ""
        if self.spacing == "spaced":
            return " "
        return self.draw(SPACES)

    def char(self, c: str) -> str:
        cp = ord(c)
        raw_ok = c not in '"\\' and cp >= 0x20
        forms = []
        if raw_ok and (self.escaping != "ascii" or cp < 0x80):
            forms.append(c)
        if c in SHORT_ESCAPES:
            forms.append(SHORT_ESCAPES[c])
        if cp > 0xFFFF:
            hi, lo = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
            forms += [f"\\u{hi:04x}\\u{lo:04x}", f"\\u{hi:04X}\\u{lo:04X}"]
        else:
            forms += [f"\\u{cp:04x}", f"\\u{cp:04X}"]
        return self.draw(st.sampled_from(forms)) if self.escaping == "random" else forms[0]

    def string(self, s: str) -> str:
        return '"' + "".join(self.char(c) for c in s) + '"'

    def value(self, v: Value) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return self.draw(st.sampled_from([json.dumps(v), f"{v:.17e}", f"{v:.3E}"]))
        if isinstance(v, str):
            return self.string(v)
        if isinstance(v, list):
            inner = ",".join(self.ws() + self.value(x) + self.ws() for x in v)
            return "[" + (inner or self.ws()) + "]"
        inner = ",".join(
            self.ws() + self.string(k) + self.ws() + ":" + self.ws() + self.value(x) + self.ws()
            for k, x in v.pairs
        )
        return "{" + (inner or self.ws()) + "}"


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """Valid JSON inside json.c's subset, written in any of the ways RFC 8259 allows."""
    r = Renderer(draw)
    return (r.ws() + r.value(draw(VALUES)) + r.ws()).encode("utf-8")


# Python accepts each of these; json.c refuses them on purpose.
REFUSED = [
    "NaN", "Infinity", "-Infinity", '"\\u0000"', '"a\\u0000b"', '{"\\u0000":1}', '"\\ud800"',
    '"\\udfff"', '"x\\ud83d"', '"\\ude00x"', '"\\ud800\\u0041"', '"\\udbff\\ud800"',
    '{"k\\udc00":1}', "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2),
]  # fmt: skip
DEEP = st.integers(MAX_DEPTH + 1, MAX_DEPTH + 8).map(lambda k: "[" * k + "1" + "]" * k) | (
    st.integers(MAX_DEPTH + 1, MAX_DEPTH + 8).map(lambda k: '{"a":' * k + "1" + "}" * k)
)
PLACES: list[Callable[[str, str], str]] = [
    lambda f, d: f,
    lambda f, d: f"[{d},{f}]",
    lambda f, d: f"[{f},{d}]",
    lambda f, d: f'{{"d":{d},"f":{f}}}',
    lambda f, d: f"[[[{f}]]]",
]


@st.composite
def refused_documents(draw: st.DrawFn) -> bytes:
    fragment = draw(st.sampled_from(REFUSED) | DEEP)
    doc = draw(documents()).decode("utf-8")
    return draw(st.sampled_from(PLACES))(fragment, doc).encode("utf-8")


# UTF-8 at the edges of validity: the last/first valid sequences around each rule, and
# overlong, surrogate, out-of-range, truncated and stray sequences.
UTF8_EDGES = [
    b"\x7f", b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
    b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xc0\x80", b"\xc1\xbf",
    b"\xe0\x9f\xbf", b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82",
    b"\xf0\x9f\x98", b"\x80", b"\xbf", b"\xfe", b"\xff",
]  # fmt: skip
TOKENS = [
    b'"', b"\\", b"\\u", b"\\ud800", b"\\udc00", b"\\u0000", b"[", b"]", b"{", b"}", b",",
    b":", b"-", b".", b"e", b"E+", b"0", b"1e999", b"true", b"nul", b"\x00", b"\x01", b"\x1f",
    b" ", b"\x0b", b"\xef\xbb\xbf", b"[" * 40, b'{"":' * 40, b"9" * 25, b"NaN", *UTF8_EDGES,
]  # fmt: skip


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    """A valid document after a few edits: truncated, spliced, repeated, corrupted."""
    doc = bytearray(draw(documents()))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(doc)))
        op = draw(st.sampled_from(["truncate", "insert", "delete", "set", "repeat", "token"]))
        if op == "truncate":
            del doc[i:]
        elif op == "insert":
            doc[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del doc[i : i + draw(st.integers(1, 8))]
        elif op == "set" and i < len(doc):
            doc[i] = draw(st.integers(0, 255))
        elif op == "repeat":
            j = draw(st.integers(i, min(len(doc), i + 64)))
            doc[j:j] = doc[i:j] * draw(st.integers(1, 40))
        elif op == "token":
            doc[i:i] = draw(st.sampled_from(TOKENS))
    return bytes(doc)


JSONISH = st.lists(st.sampled_from([*TOKENS, b"a", b"1", b"2", b"\n", b"\\n", b"\\/"])).map(
    b"".join
)

# ---- the check ----


def check(harness: JsonHarness, doc: bytes) -> Answer:
    """json.c agrees with Python on ``doc`` (and has neither crashed nor leaked)."""
    want = expect(doc)
    got = harness.parse(doc)
    if want is None:
        assert not got.ok, f"json.c accepted {describe(doc)}, which it must refuse: {got.dump}"
    else:
        assert got.ok, f"json.c refused {describe(doc)}: {got.error}"
        assert got.dump == want, f"json.c misread {describe(doc)}"
    return got


# ---- generated documents: json.c reads them as Python does ----


@FUZZ
@given(documents())
@example(b"-9223372036854775808")  # regression: LLONG_MIN was read as a number without value
def test_documents_read_as_python_reads_them(json_harness: JsonHarness, doc: bytes) -> None:
    assert expect(doc) is not None, "the generator left json.c's subset"
    check(json_harness, doc)


@FUZZ
@given(st.integers() | st.sampled_from(INT_BOUNDS), st.sampled_from(["@", "[@]", '{"v":@}']))
@example(INT_MIN, "@")  # regression: INT64_MIN fits a long long but was not is_int
def test_integers_exact_when_they_fit(json_harness: JsonHarness, n: int, where: str) -> None:
    got = check(json_harness, where.replace("@", str(n)).encode())
    if where == "@":
        assert got.dump == (["i", n] if INT_MIN <= n <= INT_MAX else ["d"])


@FUZZ
@given(
    st.integers(0, MAX_DEPTH + 8),
    st.sampled_from(["[", '{"k":', '[{"":']),
    st.sampled_from(["0", '""', "[]", "{}"]),
)
@example(MAX_DEPTH, "[", "0")
@example(MAX_DEPTH + 1, "[", "0")
@example(MAX_DEPTH, "[", "[]")
def test_nesting_limit(json_harness: JsonHarness, k: int, opener: str, inner: str) -> None:
    closer = {"[": "]", '{"k":': "}", '[{"":': "}]"}[opener]
    levels = k * (2 if opener == '[{"":' else 1)
    got = check(json_harness, (opener * k + inner + closer * k).encode())
    assert got.ok == (levels <= MAX_DEPTH)  # the innermost value sits at depth `levels`


@FUZZ
@given(refused_documents())
def test_refused_features(json_harness: JsonHarness, doc: bytes) -> None:
    assert python_accepts(doc)
    assert expect(doc) is None
    got = json_harness.parse(doc)
    assert not got.ok, f"json.c accepted {describe(doc)}: {got.dump}"


# ---- junk: json.c survives it and still agrees with Python ----


@FUZZ
@given(st.binary(max_size=512) | JSONISH)
def test_arbitrary_bytes(json_harness: JsonHarness, doc: bytes) -> None:
    check(json_harness, doc)


@FUZZ
@given(st.lists(st.binary(max_size=3) | st.sampled_from(UTF8_EDGES), max_size=6).map(b"".join))
def test_raw_bytes_in_strings(json_harness: JsonHarness, raw: bytes) -> None:
    """UTF-8 validation agrees with Python's decoder, as a value and as a member name."""
    check(json_harness, b'"' + raw + b'"')
    check(json_harness, b'{"' + raw + b'":0}')


def test_every_byte(json_harness: JsonHarness) -> None:
    """Each byte alone, in an array, raw in a string, and after a backslash."""
    for b in (bytes([i]) for i in range(256)):
        for doc in (b, b"[" + b + b"]", b'"' + b + b'"', b'"\\' + b + b'"', b'"\\u00' + b + b'1"'):
            check(json_harness, doc)


@FUZZ
@given(mutated_documents())
def test_mutated_documents(json_harness: JsonHarness, doc: bytes) -> None:
    check(json_harness, doc)


@FUZZ
@given(documents() | mutated_documents(), st.data())
def test_allocation_failures(json_harness: JsonHarness, doc: bytes, data: st.DataObject) -> None:
    """Whichever allocation fails, json.c reports it, frees what it built and leaks nothing."""
    normal = check(json_harness, doc)
    k = data.draw(st.integers(1, normal.allocations + 1), label="failing allocation")
    got = json_harness.parse(doc, fail_at=k)
    if k > normal.allocations:
        assert got == normal
    else:
        assert not got.ok
        assert got.error.startswith("out of memory"), got.error


# ---- named inputs, in both of the harness's modes ----

NASTY = {
    "empty": b"",
    "spaces": b" \t\r\n",
    "deep arrays": b"[" * 100_000,
    "deep arrays closed": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 100_000,
    "deep mixed": b'[{"":' * 50_000,
    "at the limit": b"[" * MAX_DEPTH + b"0" + b"]" * MAX_DEPTH,
    "past the limit": b"[" * (MAX_DEPTH + 1) + b"0" + b"]" * (MAX_DEPTH + 1),
    "huge integer": b"9" * 100_000,
    "huge negative": b"-" + b"9" * 100_000,
    "long fraction": b"0." + b"0" * 100_000 + b"1",
    "huge exponent": b"1e" + b"9" * 100_000,
    "int64 max": b"9223372036854775807",
    "int64 max + 1": b"9223372036854775808",
    "int64 min": b"-9223372036854775808",
    "int64 min - 1": b"-9223372036854775809",
    "minus zero": b"-0",
    "lone minus": b"-",
    "leading zero": b"01",
    "bare fraction": b"1.",
    "bare exponent": b"1e+",
    "lone high surrogate": b'"\\ud800"',
    "high surrogate at end": b'"\\ud800',
    "high surrogate, short escape": b'"\\ud800\\u00"',
    "two high surrogates": b'"\\ud800\\ud800"',
    "lone low surrogate": b'"\\udc00"',
    "surrogate pair": b'"\\ud83d\\ude00"',
    "escaped NUL": b'"\\u0000"',
    "raw NUL in string": b'"a\x00b"',
    "NUL": b"\x00",
    "NUL after value": b"1\x00",
    "invalid UTF-8": b'"\xff"',
    "overlong NUL": b'"\xc0\x80"',
    "UTF-8 surrogate": b'"\xed\xa0\x80"',
    "past U+10FFFF": b'"\xf4\x90\x80\x80"',
    "truncated UTF-8": b'"\xe2\x82"',
    "truncated UTF-8 at end": b'"\xe2\x82',
    "UTF-8 outside strings": b"[\xc3\xa9]",
    "raw control character": b'"\x1f"',
    "raw DEL": b'"\x7f"',
    "BOM": b"\xef\xbb\xbf{}",
    "backslash at end": b'"\\',
    "escaped quote at end": b'"abc\\"',
    "unterminated": b'"abc',
    "truncated \\u": b'"\\u12',
    "bad escape": b'"\\x41"',
    "trailing comma": b"[1,]",
    "trailing comma in object": b'{"a":1,}',
    "NaN": b"NaN",
    "-Infinity": b"-Infinity",
    "long string": b'"' + b"a" * 1_000_000 + b'"',
    "many \\u escapes": b'"' + b"\\u00e9" * 100_000 + b'"',
    "many surrogate pairs": b'"' + b"\\ud83d\\ude00" * 50_000 + b'"',
    "many 4-byte characters": b'"' + "😀".encode() * 100_000 + b'"',
    "wide array": b"[" + b"0," * 200_000 + b"0]",
    "wide object": b"{" + b'"a":0,' * 100_000 + b'"a":1}',
}


@pytest.mark.parametrize("doc", NASTY.values(), ids=NASTY.keys())
def test_nasty_inputs(json_harness: JsonHarness, json_harness_binary: Path, doc: bytes) -> None:
    got = check(json_harness, doc)
    line = run_once(json_harness_binary, doc)  # its own process: LeakSanitizer at exit too
    assert line.endswith("\n")
    status, _, rest = line[:-1].partition(" ")
    assert status == ("OK" if got.ok else "ERR")
    parsed: Any = json.loads(rest) if got.ok else rest
    assert parsed == (got.dump if got.ok else got.error)
