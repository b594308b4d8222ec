"""Parsing what Xen's `xl` prints: `xl list`, `xl list -l` (JSON) and `xl info`.

The one module that knows xl's output formats; its tests replay outputs recorded from a
real Xen 4.17 (tests/fixtures/xen/).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from uniklab.errors import UniklabError

_LIST_HEADER = re.compile(r"^Name\s+ID\s+Mem\s+VCPUs\s+State\s+Time\(s\)")


@dataclass(frozen=True)
class Domain:
    name: str
    domid: int
    mem_mb: int
    vcpus: int
    state: str  # xl's six flags, e.g. "-b----"
    cpu_seconds: float

    @property
    def status(self) -> str:
        """running | blocked | paused | shutdown | crashed | dying (first flag set; but
        a paused domain is paused even while a vCPU shows blocked, "-bp---")."""
        names = ["running", "blocked", "paused", "shutdown", "crashed", "dying"]
        if self.state[2:3] == "p":
            return "paused"
        for flag, name in zip(self.state, names, strict=False):
            if flag != "-":
                return name
        return "running"  # all dashes: runnable, waiting for a CPU


def parse_list(text: str) -> list[Domain]:
    """`xl list`: a header, then one line per domain (names have no spaces)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not _LIST_HEADER.match(lines[0]):
        raise UniklabError("unexpected `xl list` output: no header")
    out = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < 6:
            raise UniklabError(f"unexpected `xl list` line: {line!r}")
        name, domid, mem, vcpus, state, secs = (
            parts[-6:] if len(parts) == 6 else (" ".join(parts[:-5]), *parts[-5:])
        )
        try:
            out.append(Domain(name, int(domid), int(mem), int(vcpus), state, float(secs)))
        except ValueError as exc:
            raise UniklabError(f"unexpected `xl list` line: {line!r}") from exc
    return out


@dataclass(frozen=True)
class DomainConfig:
    """What `xl list -l` says of a domain's configuration (the parts uniklab uses)."""

    domid: int | None
    name: str
    memory_mb: int | None
    vcpus: int | None
    macs: tuple[str, ...]
    bridges: tuple[str, ...]
    kernel: str | None
    extra: str | None
    ramdisk: str | None = None


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def parse_list_long(text: str) -> list[DomainConfig]:
    """`xl list -l`: a JSON array of {domid, config: {c_info, b_info, nics, …}}."""
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise UniklabError(f"`xl list -l` did not print JSON: {exc}") from exc
    if not isinstance(data, list):
        raise UniklabError("`xl list -l` did not print a JSON array")
    out = []
    for entry in data:
        cfg = _get(entry, "config") or {}
        name = _get(cfg, "c_info", "name")
        if not isinstance(name, str):
            continue
        max_kb = _get(cfg, "b_info", "max_memkb")
        vcpus = _get(cfg, "b_info", "max_vcpus")
        nics = _get(cfg, "nics") or []
        kernel = _get(cfg, "b_info", "kernel")
        extra = _get(cfg, "b_info", "cmdline")
        ramdisk = _get(cfg, "b_info", "ramdisk")
        out.append(
            DomainConfig(
                domid=entry.get("domid") if isinstance(entry.get("domid"), int) else None,
                name=name,
                memory_mb=max_kb // 1024 if isinstance(max_kb, int) else None,
                vcpus=vcpus if isinstance(vcpus, int) else None,
                macs=tuple(str(n.get("mac")) for n in nics if isinstance(n, dict) and n.get("mac")),
                bridges=tuple(
                    str(n.get("bridge")) for n in nics if isinstance(n, dict) and n.get("bridge")
                ),
                kernel=kernel if isinstance(kernel, str) else None,
                extra=extra if isinstance(extra, str) else None,
                ramdisk=ramdisk if isinstance(ramdisk, str) else None,
            )
        )
    return out


def parse_info(text: str) -> dict[str, str]:
    """`xl info`: 'key : value' lines."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out
