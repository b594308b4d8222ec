"""Throwaway UNIKLAB_HOMEs: one with a recipe baked, and fresh copies of one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def make_baked_home(prefix: str, recipe: str = "redis") -> Path:
    """A new home under /tmp (short path: sockets live under it) with ``recipe`` baked."""
    from uniklab.lab import Lab
    from uniklab.paths import Paths

    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    lab = Lab(Paths(path))
    try:
        lab.bake(recipe)
    finally:
        lab.close()
    return path


def copy_home(source: Path, prefix: str) -> Path:
    """A fresh home holding ``source``'s images, caches and image index (no instances)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    for sub in ("images", "cache"):
        shutil.copytree(source / sub, path / sub, symlinks=True)
    shutil.copy(source / "state.db", path / "state.db")
    return path
