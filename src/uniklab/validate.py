"""Validation of everything a user hands us: names, sizes, vCPU counts, ports, MACs.

Each function returns the normalised value or raises ``UsageError`` with one clear line.
Validated values are safe to put in file names, QEMU options and remote command lines.
"""

from __future__ import annotations

import re

from uniklab.errors import UsageError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
SIZE_RE = re.compile(r"^([0-9]{1,9})\s*([KMGT]?)(i?B?)?$", re.IGNORECASE)

MIN_MEMORY_MB = 16
MAX_MEMORY_MB = 1024 * 1024
MAX_VCPUS = 64


def name(value: str, what: str = "name") -> str:
    if not NAME_RE.match(value or ""):
        raise UsageError(
            f"invalid {what} {value!r}: use 1-63 characters of a-z, 0-9, '.', '_', '-', "
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
    if isinstance(value, int):
        mb = value
    else:
        m = SIZE_RE.match(value.strip())
        if not m:
            raise UsageError(f"invalid memory size {value!r}: use e.g. 64M, 128M, 1G")
        num, unit = int(m.group(1)), m.group(2).upper()
        factor = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}[unit]
        exact = num * factor
        if exact != int(exact):
            raise UsageError(f"invalid memory size {value!r}: not a whole number of MiB")
        mb = int(exact)
    if not MIN_MEMORY_MB <= mb <= MAX_MEMORY_MB:
        raise UsageError(
            f"memory {value!r} out of range: between {MIN_MEMORY_MB}M and {MAX_MEMORY_MB // 1024}G"
        )
    return mb


def vcpus(value: int) -> int:
    if not 1 <= value <= MAX_VCPUS:
        raise UsageError(f"invalid vCPU count {value}: between 1 and {MAX_VCPUS}")
    return value


def port(value: int | str, what: str = "port") -> int:
    try:
        p = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"invalid {what} {value!r}") from None
    if not 1 <= p <= 65535:
        raise UsageError(f"invalid {what} {value!r}: between 1 and 65535")
    return p


def publish(spec: str) -> tuple[int, int]:
    """Parse '-p HOST:GUEST' (or 'GUEST', host port chosen later as 0)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return 0, port(parts[0], "guest port")
    if len(parts) == 2:
        return port(parts[0], "host port"), port(parts[1], "guest port")
    raise UsageError(f"invalid port mapping {spec!r}: use HOST:GUEST, e.g. 6379:6379")


def mac(value: str) -> str:
    v = value.strip().lower().replace("-", ":")
    if not MAC_RE.match(v):
        raise UsageError(
            f"invalid MAC address {value!r}: use six hex pairs, e.g. 52:54:00:12:34:56"
        )
    if int(v[:2], 16) & 1:
        raise UsageError(f"invalid MAC address {value!r}: a multicast address cannot name a NIC")
    if v == "00:00:00:00:00:00":
        raise UsageError(f"invalid MAC address {value!r}")
    return v


def env_pair(item: str) -> tuple[str, str]:
    key, sep, val = item.partition("=")
    if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise UsageError(f"invalid environment setting {item!r}: use NAME=VALUE")
    if "\0" in val:
        raise UsageError(f"invalid environment value for {key}: NUL byte")
    return key, val
