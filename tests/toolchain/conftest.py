"""Helpers for the toolchain tests: the pinned sources of a development checkout, and
small fake rumprun trees on which the project's patches apply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uniklab.toolchain import rumprun as rr

# tests/toolchain/conftest.py -> the repository; CI clones it beside a copy of shared/.
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "rumprun"


def shared_sources() -> Path:
    """The pinned tarballs (skips here, fails under CI=true, when they are missing)."""
    if not (SHARED / "rumprun-b04d422-src.tar.xz").is_file():
        pytest.skip(f"the pinned rumprun sources are not in {SHARED}")
    return SHARED


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


def preimage(patch: str) -> dict[str, str]:
    """The files a unified diff applies to, as far as it shows them: each hunk's context
    and removed lines at their line numbers, filler lines in between."""
    files: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in patch.splitlines():
        if line.startswith("--- a/"):
            lines = files.setdefault(line[len("--- a/") :], [])
            continue
        if line.startswith("+++ "):
            continue
        m = _HUNK.match(line)
        if m:
            start = int(m.group(1))
            while len(lines) < start - 1:
                lines.append(f"filler {len(lines) + 1}")
            continue
        if files and (line.startswith((" ", "-")) or line == ""):
            lines.append(line[1:])
    return {path: "\n".join(body) + "\n" for path, body in files.items()}


def fake_tree(root: Path, platform: str = "xen") -> Path:
    """A tree rumprun's checks accept, holding what the platform's patches touch."""
    tree = root / "rumprun"
    (tree / "buildrump.sh").mkdir(parents=True)
    (tree / "buildrump.sh" / "buildrump.sh").write_text("#!/bin/sh\n")
    (tree / "src-netbsd" / "sys").mkdir(parents=True)
    (tree / "build-rr.sh").write_text("#!/bin/sh\n")
    for patch in rr.patches_for(platform):
        for path, text in preimage(patch.text()).items():
            target = tree / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return tree
