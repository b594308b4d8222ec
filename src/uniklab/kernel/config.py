"""Kernel config fragments as data: parse, merge over a base .config, verify the result.

Pure functions, no I/O beyond reading the packaged fragment files: the merge is what
``scripts/kconfig/merge_config.sh -m`` does (a later value of a symbol replaces an earlier
one), and the check after ``make olddefconfig`` catches what Kconfig dropped silently
(an unmet dependency, a choice that lost).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources

from uniklab.errors import UsageError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

# A profile is an ordered list of fragments; later fragments win.
PROFILES: dict[str, tuple[str, ...]] = {
    "microvm": ("base",),
    "xen": ("base", "xen"),
}
DEFAULT_PROFILE = "microvm"
# Bump when the way a kernel is built changes (not its inputs), to rebuild every cache entry.
BUILD_FORMAT = 1


@dataclass(frozen=True)
class Fragment:
    name: str
    text: str

    @property
    def options(self) -> dict[str, str]:
        return parse(self.text, where=f"fragment {self.name}")


def parse(text: str, *, where: str = "config") -> dict[str, str]:
    """``{"CONFIG_X": "y" | "n" | value}``; ``# CONFIG_X is not set`` reads as ``n``."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if m := _SET.match(line):
            out[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            out[m.group(1)] = "n"
        elif not line.startswith("#"):
            raise UsageError(f"{where}:{lineno}: not a kconfig line: {raw!r}")
    return out


def load_fragment(name: str) -> Fragment:
    path = resources.files("uniklab.kernel").joinpath("fragments", f"{name}.config")
    try:
        return Fragment(name, path.read_text())
    except FileNotFoundError as exc:
        raise UsageError(f"no kernel config fragment {name!r}") from exc


def profile_fragments(profile: str) -> list[Fragment]:
    try:
        names = PROFILES[profile]
    except KeyError as exc:
        known = ", ".join(sorted(PROFILES))
        raise UsageError(f"unknown kernel profile {profile!r} (known: {known})") from exc
    return [load_fragment(n) for n in names]


def _line(symbol: str, value: str) -> str:
    return f"# {symbol} is not set" if value == "n" else f"{symbol}={value}"


def merge(base: str, fragments: list[Fragment]) -> str:
    """``base`` with every fragment option applied: its old line removed, the new one appended
    (appending, as merge_config.sh does, lets Kconfig see a choice's new member last)."""
    wanted = wanted_options(fragments)
    kept = []
    for raw in base.splitlines():
        line = raw.strip()
        m = _SET.match(line) or _UNSET.match(line)
        if m and m.group(1) in wanted:
            continue
        kept.append(raw)
    kept += [_line(s, v) for s, v in wanted.items()]
    return "\n".join(kept) + "\n"


def wanted_options(fragments: list[Fragment]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for frag in fragments:
        wanted.update(frag.options)
    return wanted


def dropped(final: str, fragments: list[Fragment]) -> list[str]:
    """The fragment options the final .config does not carry, as ``CONFIG_X=want (got)``."""
    have = parse(final, where=".config")
    out = []
    for symbol, value in wanted_options(fragments).items():
        got = have.get(symbol, "n")
        if got != value:
            out.append(f"{symbol}={value} (got {'unset' if got == 'n' else got})")
    return out


def has_option(config_text: str, symbol: str) -> bool:
    return parse(config_text).get(symbol, "n") == "y"


def cache_key(*, source_version: str, gcc_version: str, fragments: list[Fragment]) -> str:
    """What decides a kernel's bytes: the source, the compiler, the fragments (in order)."""
    doc = {
        "format": BUILD_FORMAT,
        "source": source_version,
        "gcc": gcc_version,
        "fragments": [[f.name, f.text] for f in fragments],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
