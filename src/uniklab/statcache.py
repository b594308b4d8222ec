"""Facts about host files, remembered across commands while the file is unchanged.

A bake reads the same ELF headers and hashes the same libraries every time; under this
memo a cached bake of Debian's Redis goes from ~0.12 s to a few stat() calls.  An entry is
keyed by the file's device, inode, size and mtime (what make and ccache trust): a package
upgrade replaces the file, and the entry no longer matches.  The memo is one JSON file in
the machine-wide build cache, written whole and renamed into place, so concurrent
commands at worst recompute an entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from uniklab import buildcache

VERSION = 1
_entries: dict[str, Any] | None = None
_dirty = False


def _file() -> Path:
    return buildcache.root("facts", "UNIKLAB_FACTS_CACHE") / f"files-v{VERSION}.json"


def _load() -> dict[str, Any]:
    global _entries
    if _entries is None:
        try:
            doc = json.loads(_file().read_text())
            _entries = doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            _entries = {}
    return _entries


def _key(path: Path, kind: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{kind}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def get(path: Path, kind: str) -> Any:
    """The remembered ``kind`` fact about ``path``, or None."""
    key = _key(path, kind)
    return None if key is None else _load().get(key)


def put(path: Path, kind: str, value: Any) -> None:
    global _dirty
    key = _key(path, kind)
    if key is not None:
        _load()[key] = value
        _dirty = True


def save() -> None:
    """Write the memo if it changed (best effort: a read-only cache only costs speed)."""
    global _dirty
    if not _dirty or _entries is None:
        return
    target = _file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".facts-", dir=target.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(_entries, fh)
        os.replace(tmp, target)
        _dirty = False
    except OSError:
        pass
