"""Content digests of files (images are content-addressed; copies are verified by them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from uniklab import statcache


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (hex), read in full: for verifying copies."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_known(path: Path) -> str:
    """The file's SHA-256, remembered while it is unchanged (``uniklab.statcache``): for
    the bake's input digest, which hashes the same libraries on every bake."""
    known = statcache.get(path, "sha256")
    if isinstance(known, str):
        return known
    digest = sha256_file(path)
    statcache.put(path, "sha256", digest)
    return digest
