"""The configuration of a rumprun unikernel: what rumprun's launcher writes, as data.

A rumprun guest has no uniklab init: it reads one JSON document (rumprun's
``doc/config.md``: ``cmdline``, ``env``, ``hostname``, ``net``, ``blk``) from its kernel
command line (``hw``) or from the xenstore key ``rumprun/cfg`` (``xen``).  The words that
differ by hypervisor (the NIC driver: ``vioif`` or ``xenif``; how a disk is named) are
the backend's: it calls ``render`` with them.

rumprun's parser (jsmn, ``lib/librumprun_base/config.c``) hands string values over as
their raw JSON text, unescaped, and allows a key more than once (``env``, ``blk``); the
command line is then split by ``parseargs.c``: whitespace separates, ``'…'`` and ``"…"``
group, a backslash takes the next character as it is.  So the text is built here by hand,
and an argument is written so that both readers give back exactly its characters.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from uniklab.guest.config import Nic

# Bytes the raw JSON text cannot carry unescaped (jsmn stops at '"', and a backslash
# escape reaches the program as two characters): refused in env, hostname and mounts.
_RAW_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
# hw's BMK_MULTIBOOT_CMDLINE_SIZE is 4096; leave room for the rest of the document.
MAX_CMDLINE = 3000


class RumprunNet(BaseModel):
    """One interface: DHCP, or a static address (CIDR) and optional gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["dhcp", "static"] = "dhcp"
    addr: str | None = None  # CIDR
    gw: str | None = None

    @classmethod
    def of(cls, nic: Nic) -> RumprunNet:
        if nic.dhcp:
            return cls()
        return cls(method="static", addr=nic.addr, gw=nic.gw)


class RumprunConfig(BaseModel):
    """Everything a rumprun guest is told at boot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    argv: list[str]  # argv[0] first
    env: dict[str, str] = Field(default_factory=dict)
    hostname: str = ""
    net: list[RumprunNet] = Field(default_factory=list)
    # One per disk, in the disks' order: where it is mounted ("": attached, not mounted).
    mounts: list[str] = Field(default_factory=list)

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a rumprun guest needs a program name (argv[0])")
        for a in v:
            if "'" in a or any(ord(c) < 0x20 or ord(c) == 0x7F for c in a):
                raise ValueError(
                    f"argument {a!r}: rumprun's command line cannot carry a single quote "
                    "or a control character"
                )
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, val in v.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if _RAW_UNSAFE.search(val):
                raise ValueError(
                    f"environment {key}: rumprun's config parser cannot carry quotes, "
                    "backslashes or control characters in a value"
                )
        return v

    @field_validator("net")
    @classmethod
    def _net(cls, v: list[RumprunNet]) -> list[RumprunNet]:
        if len(v) > 1:
            # config.c: 'currently only 1 "net" configuration is supported'
            raise ValueError("a rumprun guest configures one network interface (give one --net)")
        return v

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if v and not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$", v):
            raise ValueError(f"invalid rumprun hostname {v!r}")
        return v

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, v: list[str]) -> list[str]:
        for m in v:
            if m and (not m.startswith("/") or _RAW_UNSAFE.search(m) or " " in m):
                raise ValueError(f"invalid mount point {m!r}")
        return v

    def cmdline(self) -> str:
        """argv as rumprun's ``cmdline`` value (raw JSON text that parseargs splits back)."""
        text = " ".join(_quote(a) for a in self.argv)
        if len(text) > MAX_CMDLINE:
            raise ValueError(
                f"rumprun command line of {len(text)} characters is longer than {MAX_CMDLINE}"
            )
        return text

    def render(
        self,
        *,
        netif: str,
        cloner: bool,
        blk: Callable[[int], dict[str, str]],
        extra_blk: Sequence[dict[str, str]] = (),
    ) -> str:
        """The JSON document: ``netif`` is the driver's name (``vioif``, ``xenif``; the
        interface is ``<netif>0``), ``cloner`` whether rumprun creates it at boot (Xen's
        netfront), ``blk(i)`` the source and path of the i-th disk, ``extra_blk`` what the
        platform always mounts (Xen's kernfs)."""
        parts: list[str] = []
        for b in extra_blk:
            parts.append(_pair("blk", _object(b)))
        for i, mount in enumerate(self.mounts):
            where = {"fstype": "blk", "mountpoint": mount} if mount else {}
            parts.append(_pair("blk", _object({**blk(i), **where})))
        for key, val in self.env.items():
            parts.append(_pair("env", _string(f"{key}={val}")))
        for n in self.net:
            d = {"if": f"{netif}0"}
            if cloner:
                d["cloner"] = "true"
            d.update({"type": "inet", "method": n.method})
            if n.method == "static":
                assert n.addr is not None
                iface = ipaddress.IPv4Interface(n.addr)
                d.update({"addr": str(iface.ip), "mask": str(iface.network.prefixlen)})
                if n.gw:
                    d["gw"] = n.gw
            parts.append(_pair("net", _object(d)))
        parts.append(_pair("cmdline", f'"{self.cmdline()}"'))
        if self.hostname:
            parts.append(_pair("hostname", _string(self.hostname)))
        return "{" + ",".join(parts) + "}"


def _quote(arg: str) -> str:
    r"""One argument as parseargs.c reads it, written as raw JSON string text: ``\\``
    (valid JSON) reaches parseargs as a backslash escaping a backslash, ``\"`` as one
    escaping a quote; whitespace is grouped in single quotes.  A single quote cannot be
    written at all (``\'`` is not JSON): the argument check refuses it."""
    if arg == "":
        return "''"
    out = []
    for c in arg:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c.isspace():
            out.append(f"'{c}'")
        else:
            out.append(c)
    return "".join(out)


def _string(value: str) -> str:
    if _RAW_UNSAFE.search(value):
        raise ValueError(f"{value!r} cannot be carried in rumprun's config")
    return f'"{value}"'


def _object(d: dict[str, str]) -> str:
    return "{" + ",".join(_pair(k, _string(v)) for k, v in d.items()) + "}"


def _pair(key: str, value: str) -> str:
    return f"{json.dumps(key)}:{value}"
