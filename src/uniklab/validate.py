"""Validation of everything a user hands us: names, sizes, vCPU counts, ports, MACs.

Each function returns the normalised value or raises ``UsageError`` with one clear line.
Validated values are safe to put in file names, QEMU options and remote command lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from uniklab.errors import UsageError

if TYPE_CHECKING:
    from pydantic import ValidationError

T = TypeVar("T")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,62}$")
SIZE_RE = re.compile(r"^([0-9]{1,9})\s*([KMGT]?)(i?B?)?$", re.IGNORECASE)

MIN_MEMORY_MB = 16
MAX_MEMORY_MB = 1024 * 1024
MAX_VCPUS = 64


def name(value: str, what: str = "name") -> str:
    if not NAME_RE.match(value or ""):
        raise UsageError(
            f"invalid {what} {short(value)}: use 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return value


def image_ref(ref: str) -> tuple[str, str]:
    """Split 'name[:tag]' into (name, tag), tag defaulting to 'latest'."""
    base, _, tag = ref.partition(":")
    name(base, "image name")
    tag = tag or "latest"
    if not TAG_RE.match(tag):
        raise UsageError(f"invalid image tag {tag!r}")
    return base, tag


def memory_mb(value: str | int) -> int:
    """Parse '128M', '1G', '65536K', '128' (MiB) into MiB."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise UsageError(f"invalid memory size {short(value)}: use e.g. 64M, 128M, 1G or MiB")
    if isinstance(value, int):
        mb = value
    else:
        m = SIZE_RE.match(value.strip())
        if not m:
            raise UsageError(f"invalid memory size {short(value)}: use e.g. 64M, 128M, 1G")
        num, unit = int(m.group(1)), m.group(2).upper()
        factor = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}[unit]
        exact = num * factor
        if exact != int(exact):
            raise UsageError(f"invalid memory size {short(value)}: not a whole number of MiB")
        mb = int(exact)
    if not MIN_MEMORY_MB <= mb <= MAX_MEMORY_MB:
        raise UsageError(
            f"memory {short(value)} out of range: "
            f"between {MIN_MEMORY_MB}M and {MAX_MEMORY_MB // 1024}G"
        )
    return mb


def vcpus(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VCPUS:
        raise UsageError(f"invalid vCPU count {short(value)}: between 1 and {MAX_VCPUS}")
    return value


def port(value: int | str, what: str = "port") -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageError(f"invalid {what} {short(value)}")
    try:
        p = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"invalid {what} {short(value)}") from None
    if not 1 <= p <= 65535:
        raise UsageError(f"invalid {what} {short(value)}: between 1 and 65535")
    return p


def publish(spec: str) -> tuple[int, int]:
    """Parse '-p HOST:GUEST' (or 'GUEST', host port chosen later as 0)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return 0, port(parts[0], "guest port")
    if len(parts) == 2:
        return port(parts[0], "host port"), port(parts[1], "guest port")
    raise UsageError(f"invalid port mapping {short(spec)}: use HOST:GUEST, e.g. 6379:6379")


def mac(value: str) -> str:
    v = value.strip().lower().replace("-", ":")
    if not MAC_RE.match(v):
        raise UsageError(
            f"invalid MAC address {short(value)}: use six hex pairs, e.g. 52:54:00:12:34:56"
        )
    if int(v[:2], 16) & 1:
        raise UsageError(
            f"invalid MAC address {short(value)}: a multicast address cannot name a NIC"
        )
    if v == "00:00:00:00:00:00":
        raise UsageError(f"invalid MAC address {short(value)}")
    return v


def env(values: object) -> dict[str, str]:
    """An environment for the app: a mapping of NAME to a string value, no NUL anywhere."""
    if not isinstance(values, Mapping):
        raise UsageError(f"invalid environment {short(values)}: a mapping of NAME to VALUE")
    out = {}
    for key, val in values.items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise UsageError(f"invalid environment variable name {short(key)}")
        if not isinstance(val, str):
            raise UsageError(f"invalid environment value for {key}: {short(val)} is not a string")
        if "\0" in val:
            raise UsageError(f"invalid environment value for {key}: NUL byte")
        out[key] = val
    return out


def args(values: object) -> list[str]:
    """The app's extra arguments: a list of strings without NUL bytes (a C string ends there)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise UsageError(f"invalid arguments {short(values)}: a list of strings")
    for a in values:
        if not isinstance(a, str):
            raise UsageError(f"invalid argument {short(a)}: not a string")
        if "\0" in a:
            raise UsageError(f"invalid argument {short(a)}: NUL byte")
    return list(values)


def labels(values: object) -> dict[str, str]:
    """Labels: KEY (letters, digits, '.', '_', '-', '/') to a string value without NUL."""
    if not isinstance(values, Mapping):
        raise UsageError(f"invalid labels {short(values)}: a mapping of KEY to VALUE")
    for key, val in values.items():
        if not isinstance(key, str) or not LABEL_RE.match(key):
            raise UsageError(f"invalid label key {short(key)}: 1-63 of A-Z a-z 0-9 '.' '_' '-' '/'")
        if not isinstance(val, str) or "\0" in val:
            raise UsageError(f"invalid label value for {key}: {short(val)}")
    return dict(values)


def label_pair(item: str) -> tuple[str, str]:
    """'-l KEY=VALUE' on a command line."""
    key, sep, val = item.partition("=")
    if not sep:
        raise UsageError(f"invalid label {short(item)}: use KEY=VALUE")
    labels({key: val})
    return key, val


def timeout(value: object, what: str = "timeout") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"invalid {what} {short(value)}: a positive number of seconds")
    return float(value)


def short(value: object, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters, for error lines about huge inputs."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def env_pair(item: str) -> tuple[str, str]:
    key, sep, val = item.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise UsageError(f"invalid environment setting {short(item)}: use NAME=VALUE")
    if "\0" in val:
        raise UsageError(f"invalid environment value for {key}: NUL byte")
    return key, val


# ---------------------------------------------------------------- inside pydantic models


def in_model(fn: Callable[..., T], *args: object) -> T:
    """Run one of these functions inside a pydantic validator: pydantic turns a
    ``ValueError`` into the field's error, while a ``UsageError`` would escape it."""
    try:
        return fn(*args)
    except UsageError as exc:
        raise ValueError(str(exc)) from None


def first_problem(exc: ValidationError, whole: str) -> str:
    """The first problem pydantic found, as one line ``key.path: message`` (``whole``
    names the document when the problem is not one key's)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{where}: {msg}"
