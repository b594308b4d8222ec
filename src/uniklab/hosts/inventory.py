"""The inventory of lab hosts: name, SSH target, data and BMC (iLO) addresses, hypervisor.

As in the runbook's "Labs Hardware": each integration host has a data address and an iLO
address.  Everything here is validated, since it ends up on ssh command lines.

A plain dataclass that checks itself (not a pydantic model): every command that drives a
backend makes a ``Host``, `uniklab ps` included, and should not pay pydantic's import.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from uniklab import validate
from uniklab.backends import registry
from uniklab.errors import UsageError

HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
LIBVIRT_SCHEME_RE = re.compile(r"^(qemu|xen|test)(\+(ssh|libssh|libssh2|tcp|tls|unix))?$")
LIBVIRT_URI_RE = re.compile(r"^[A-Za-z0-9+]+://[A-Za-z0-9@._:\-\[\]]*/[A-Za-z0-9/._=&?-]*$")


def address(value: str, what: str) -> str:
    """An IP address or a DNS host name; nothing a shell or ssh could misread."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: an IP address or host name")
    return value


class HostFieldError(ValueError):
    """A field of a host entry is wrong: ``field`` names it; the message says how."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _text(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError("a string")
    return v


def _name(v: object) -> str:
    try:
        return validate.name(_text(v), "host name")
    except UsageError as exc:
        raise ValueError(str(exc)) from None


def _ssh(v: object) -> str:
    user, sep, host = _text(v).rpartition("@")
    if not sep or not USER_RE.match(user):
        raise ValueError(f"invalid SSH target {v!r}: use USER@ADDRESS, e.g. root@10.0.0.5")
    return f"{user}@{address(host, 'SSH address')}"


def _port(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("an integer")
    if not 1 <= v <= 65535:
        raise ValueError(f"invalid SSH port {v}")
    return v


def _file(v: object) -> str:
    path = Path(_text(v)).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {v}")
    return str(path.resolve())


def _address(v: object) -> str:
    return address(_text(v), "address")


def _hypervisor(v: object) -> str:
    if v not in registry.names():
        raise ValueError(f"unknown hypervisor {v!r}: one of {', '.join(registry.names())}")
    return str(v)


def _libvirt(v: object) -> str:
    uri = _text(v)
    parts = urlsplit(uri)
    if not LIBVIRT_SCHEME_RE.match(parts.scheme) or not LIBVIRT_URI_RE.match(uri):
        raise ValueError(
            f"invalid libvirt URI {uri!r}: e.g. qemu:///system or qemu+ssh://root@host/system"
        )
    if parts.hostname:
        address(parts.hostname, "libvirt host")
    return uri


def _limit(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"invalid instance limit {v!r}: a whole number, 0 or more")
    return v


def _labels(v: object) -> dict[str, str]:
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise ValueError("a table of text values")
    return v


def _optional(fn: Callable[[object], object]) -> Callable[[object], object]:
    return lambda v: None if v is None else fn(v)


# Each field's check, in the fields' order (the first wrong one is reported).
_CHECKS: dict[str, Callable[[object], object]] = {
    "name": _name,
    "ssh": _optional(_ssh),
    "port": _port,
    "identity": _optional(_file),
    "known_hosts": _optional(_file),
    "data": _optional(_address),
    "bmc": _optional(_address),
    "hypervisor": _hypervisor,
    "libvirt": _optional(_libvirt),
    "max_instances": _optional(_limit),
    "labels": _labels,
}


@dataclasses.dataclass(frozen=True)
class Host:
    """One inventory entry, checked when made: ``HostFieldError`` (a ``ValueError``) names
    the first wrong field.  Text fields are normalised (an SSH target's address, a key
    file's absolute path)."""

    name: str
    ssh: str | None = None  # user@address; None for the local machine
    port: int = 22
    identity: str | None = None  # private key file
    known_hosts: str | None = None  # a known_hosts file of its own (else the user's)
    data: str | None = None  # data-plane address
    bmc: str | None = None  # BMC / iLO address (inventory data: never contacted)
    hypervisor: str = "xen"  # a backend's name (uniklab.backends.registry)
    libvirt: str | None = None  # the libvirt URI (hypervisor "libvirt")
    # At most this many live instances (0: none; a drained host); None: no limit.
    max_instances: int | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for field, check in _CHECKS.items():
            value = getattr(self, field)
            try:
                fixed = check(value)
            except ValueError as exc:
                raise HostFieldError(field, str(exc)) from None
            if fixed != value:
                object.__setattr__(self, field, fixed)
        if self.libvirt and self.hypervisor != "libvirt":
            raise HostFieldError(
                "libvirt", f"a libvirt URI is for hypervisor libvirt, not {self.hypervisor}"
            )
        if self.hypervisor == "libvirt" and self.libvirt is None:
            raise HostFieldError("libvirt", "a libvirt host needs its URI, e.g. qemu:///system")
        if self.libvirt and urlsplit(self.libvirt).hostname and self.ssh is None:
            raise HostFieldError(
                "ssh", "a remote libvirt host needs an SSH target too (its console logs and "
                "guests' addresses are read over SSH)"
            )

    @classmethod
    def parse(cls, fields: Mapping[str, object]) -> Host:
        """A host from an entry's fields (user input, a stored document): unknown and
        missing fields are ``HostFieldError``s too."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in fields:
            if key not in known:
                raise HostFieldError(str(key), "unknown key")
        if "name" not in fields:
            raise HostFieldError("name", "required")
        return cls(**fields)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, doc: str) -> Host:
        """A host from the store's document of it (``to_json``)."""
        data = json.loads(doc)
        if not isinstance(data, dict):
            raise HostFieldError("host", "not a host entry")
        return cls.parse(data)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @property
    def is_local(self) -> bool:
        return self.ssh is None
