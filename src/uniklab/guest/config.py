"""The guest configuration: what an instance needs at boot, handed to the guest init.

It travels as one JSON document on the kernel command line, base64url-encoded (no padding)
after ``uniklab.config=``, so that neither the kernel's nor Xen's command-line parsing can
split or unquote it.  The parameter has a dot in its name, so the kernel treats it as a
module parameter and does not pass it to init as an environment variable.  The same
encoding serves every backend.  ``init.c`` is the reader; keep the two in step.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CMDLINE_KEY = "uniklab.config"
# x86's COMMAND_LINE_SIZE is 2048; leave room for the rest of the command line.
MAX_ENCODED = 1400


class Nic(BaseModel):
    """One network interface, matched in the guest by its MAC address."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mac: str
    dhcp: bool = True
    addr: str | None = None  # CIDR, e.g. 10.77.0.20/24, when dhcp is false
    gw: str | None = None

    @model_validator(mode="after")
    def _static_needs_addr(self) -> Nic:
        if not self.dhcp and not self.addr:
            raise ValueError("a static NIC needs an address (CIDR)")
        if self.addr:
            ipaddress.IPv4Interface(self.addr)
        if self.gw:
            ipaddress.IPv4Address(self.gw)
        return self


class Channel(BaseModel):
    """One channel (see ``uniklab.channels``): its transport name and the guest port it
    serves ("in": the host connects to 127.0.0.1:port) or listens on ("out": a link)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9.]{1,31}$")
    port: int = Field(ge=1, le=65535)
    dir: Literal["in", "out"] = "in"


class GuestConfig(BaseModel):
    """Version 1 of the document read by the guest init (``src/uniklab/guest/init.c``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    name: str = "uniklab"
    args: list[str] = Field(default_factory=list)  # appended to the image's entrypoint
    env: dict[str, str] = Field(default_factory=dict)  # merged over the image's env
    net: list[Nic] = Field(default_factory=list)
    dns: list[str] = Field(default_factory=list)
    clock: Literal["rtc", "none"] = "rtc"
    # "IP:PORT" of a host clock service (one line "SECONDS.NANOS" per TCP connection);
    # tried first, the RTC is the fallback.
    timesrc: str | None = None
    channels: list[Channel] = Field(default_factory=list)  # see uniklab.channels

    @field_validator("env")
    @classmethod
    def _env_keys(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"bad environment variable name {key!r}")
        return env

    def to_json(self) -> str:
        doc = self.model_dump(exclude_defaults=False)
        if not doc["channels"]:
            del doc["channels"]  # the command line is short: only a guest with channels
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True)

    def encode(self) -> str:
        """The ``uniklab.config=...`` kernel parameter."""
        raw = base64.urlsafe_b64encode(self.to_json().encode()).decode().rstrip("=")
        if len(raw) > MAX_ENCODED:
            raise ValueError(
                f"guest config too large for the kernel command line ({len(raw)} > {MAX_ENCODED})"
            )
        return f"{CMDLINE_KEY}={raw}"

    @classmethod
    def decode(cls, param: str) -> GuestConfig:
        """Inverse of ``encode``; accepts the parameter with or without its key."""
        value = param.split("=", 1)[1] if param.startswith(CMDLINE_KEY + "=") else param
        value += "=" * (-len(value) % 4)
        return cls.model_validate_json(base64.urlsafe_b64decode(value.encode()))
