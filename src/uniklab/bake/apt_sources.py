"""The host's Debian archives, as ``deb-src`` lines for uniklab's private apt setup.

``apt-get source`` needs ``deb-src`` entries that a stock Debian install does not have.
uniklab never edits the host's apt configuration: it reads the ``deb`` entries (one-line
``sources.list`` files and deb822 ``.sources`` files) and writes the matching ``deb-src``
lines into a list of its own, used with its own state directories (``apt_options``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

APT_ETC = Path("/etc/apt")


@dataclass(frozen=True)
class Archive:
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str | None = None

    def deb_src(self) -> str:
        opts = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        return f"deb-src {opts}{self.uri} {self.suite} {' '.join(self.components)}"


def parse_one_line(text: str) -> list[Archive]:
    """``deb [opts] URI SUITE COMPONENT…`` lines (sources.list(5), one-line style)."""
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        signed_by = None
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w)
                if w.endswith("]"):
                    break
            for opt in " ".join(opts).strip("[]").split():
                key, _, value = opt.partition("=")
                if key == "signed-by":
                    signed_by = value
        if len(words) >= 2:
            found.append(Archive(words[0], words[1], tuple(words[2:]), signed_by))
    return found


def parse_deb822(text: str) -> list[Archive]:
    """deb822 stanzas (``Types: deb``, ``URIs``, ``Suites``, ``Components``, ``Signed-By``)."""
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:  # a continuation line
                fields[key] += " " + raw.strip()
            elif ":" in raw:
                key, _, value = raw.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        signed = fields.get("signed-by")
        signed_by = signed if signed and signed.startswith("/") else None
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                comps = tuple(fields.get("components", "").split())
                found.append(Archive(uri, suite, comps, signed_by))
    return found


def host_archives(etc: Path = APT_ETC) -> list[Archive]:
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    found: list[Archive] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            found += parse_deb822(text)
        elif path.suffix == ".list" or path.name == "sources.list":
            found += parse_one_line(text)
    return list(dict.fromkeys(found))


def apt_options(state: Path, sources_list: Path) -> list[str]:
    """``-o`` options that point apt at a private source list and private state/cache."""
    opts = {
        "Dir::Etc::SourceList": str(sources_list),
        "Dir::Etc::SourceParts": str(state / "sources.list.d"),
        "Dir::State::Lists": str(state / "lists"),
        "Dir::Cache": str(state / "cache"),
    }
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]
