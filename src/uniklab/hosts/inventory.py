"""The inventory of lab hosts: name, SSH target, data and BMC (iLO) addresses, hypervisor.

As in the runbook's "Labs Hardware": each integration host has a data address and an iLO
address.  Everything here is validated, since it ends up on ssh command lines.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from uniklab import validate
from uniklab.backends import registry

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


class Host(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    ssh: str | None = None  # user@address; None for the local machine
    port: int = 22
    identity: str | None = None  # private key file
    known_hosts: str | None = None  # a known_hosts file of its own (else the user's)
    data: str | None = None  # data-plane address
    bmc: str | None = None  # BMC / iLO address (inventory data: never contacted)
    hypervisor: str = "xen"  # a backend's name (uniklab.backends.registry)
    libvirt: str | None = None  # the libvirt URI (hypervisor "libvirt")
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate.in_model(validate.name, v, "host name")

    @field_validator("ssh")
    @classmethod
    def _ssh(cls, v: str | None) -> str | None:
        if v is None:
            return v
        user, sep, host = v.rpartition("@")
        if not sep or not USER_RE.match(user):
            raise ValueError(f"invalid SSH target {v!r}: use USER@ADDRESS, e.g. root@10.0.0.5")
        return f"{user}@{address(host, 'SSH address')}"

    @field_validator("hypervisor")
    @classmethod
    def _hypervisor(cls, v: str) -> str:
        if v not in registry.names():
            raise ValueError(f"unknown hypervisor {v!r}: one of {', '.join(registry.names())}")
        return v

    @field_validator("libvirt")
    @classmethod
    def _libvirt(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if not LIBVIRT_SCHEME_RE.match(parts.scheme) or not LIBVIRT_URI_RE.match(v):
            raise ValueError(
                f"invalid libvirt URI {v!r}: e.g. qemu:///system or qemu+ssh://root@host/system"
            )
        if parts.hostname:
            address(parts.hostname, "libvirt host")
        return v

    @model_validator(mode="after")
    def _engine(self) -> Host:
        if self.libvirt and self.hypervisor != "libvirt":
            raise ValueError(f"a libvirt URI is for hypervisor libvirt, not {self.hypervisor}")
        if self.hypervisor == "libvirt" and self.libvirt is None:
            raise ValueError("a libvirt host needs its URI, e.g. --libvirt qemu:///system")
        if self.libvirt and urlsplit(self.libvirt).hostname and self.ssh is None:
            raise ValueError(
                f"libvirt host {self.name} is remote: give --ssh too (its console logs are "
                "read over SSH)"
            )
        return self

    @field_validator("data", "bmc")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        return None if v is None else address(v, "address")

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"invalid SSH port {v}")
        return v

    @field_validator("identity", "known_hosts")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(f"no such file: {v}")
        return str(path.resolve())

    @property
    def is_local(self) -> bool:
        return self.ssh is None
