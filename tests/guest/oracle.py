"""What the guest init's JSON reader must make of any input, according to Python's json.

json.c reads strict RFC 8259 JSON in UTF-8, like ``json.loads``, minus a few things it
refuses on purpose (the guest has no use for them and C strings could not carry them):

- NaN, Infinity and -Infinity (Python's extension);
- strings holding U+0000 (``\\u0000``) or a lone surrogate (``\\ud800``), values or keys;
- values nested deeper than ``MAX_DEPTH`` (the top-level value is at depth 0).

It keeps no value for numbers other than integers that fit a ``long long``.  ``expect``
renders Python's reading in the harness's tagged dump, or None when json.c must refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32  # json.c
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class _Refused(Exception):
    """Python accepts this, json.c refuses it on purpose."""


@dataclass(frozen=True)
class _Num:
    value: int | None  # None: not an integer that fits


@dataclass(frozen=True)
class _Obj:
    pairs: list[tuple[str, Any]]


def _int(text: str) -> _Num:
    # Digits beyond 20 cannot fit; int() of them could also exceed Python's digit limit.
    if len(text) > 20:
        return _Num(None)
    n = int(text)
    return _Num(n if INT_MIN <= n <= INT_MAX else None)


def _float(text: str) -> _Num:
    return _Num(None)


def _constant(text: str) -> Any:
    raise _Refused(text)


def _string(s: str) -> str:
    if "\0" in s or any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        raise _Refused("NUL or lone surrogate")
    return s


def _tag(v: Any, depth: int) -> list[Any]:
    if depth > MAX_DEPTH:
        raise _Refused("too deep")
    if v is None:
        return ["n"]
    if isinstance(v, bool):
        return ["b", int(v)]
    if isinstance(v, _Num):
        return ["i", v.value] if v.value is not None else ["d"]
    if isinstance(v, str):
        return ["s", _string(v)]
    if isinstance(v, list):
        return ["a", [_tag(x, depth + 1) for x in v]]
    if isinstance(v, _Obj):
        return ["o", [[_string(k), _tag(x, depth + 1)] for k, x in v.pairs]]
    raise TypeError(f"unexpected {type(v).__name__} from json.loads")


def expect(doc: bytes) -> list[Any] | None:
    """The tagged dump json.c must produce for ``doc``, or None if it must refuse it."""
    try:
        text = doc.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_Obj,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
        return _tag(value, 0)
    except (UnicodeDecodeError, ValueError, RecursionError, _Refused):
        return None


def python_accepts(doc: bytes) -> bool:
    """Plain ``json.loads``, extensions and all (to tell a deliberate refusal from junk)."""
    try:
        json.loads(doc.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True
