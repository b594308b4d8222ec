"""Compile the guest init (``init.c`` and friends, PID 1 of every Linux-kernel image).

The binary is static (musl when available) and cached per machine under the caller's cache
directory, keyed by the sources and the compiler, so bakes after the first one reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from uniklab.errors import BakeError, CommandError
from uniklab.executor import local

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
# musl gives a ~80 KB init; glibc's static libc works too but is far larger.
COMPILERS = ("musl-gcc", "gcc")
CFLAGS = ("-static", "-Os", "-s", "-std=gnu11", "-Wall")
COMPILE_TIMEOUT = 120.0


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c")) + sorted(SOURCE_DIR.glob("*.h"))


def _find_compiler() -> str:
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    raise BakeError("no C compiler for the guest init: install musl-tools (musl-gcc) or gcc")


def _cache_key(compiler: str, sources: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(compiler.encode() + b"\0" + " ".join(CFLAGS).encode() + b"\0")
    for src in sources:
        h.update(src.name.encode() + b"\0")
        h.update(src.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_init(cache_dir: Path) -> Path:
    """Return the path of the compiled init in ``cache_dir``, compiling it if needed."""
    sources = _sources()
    if not any(s.suffix == ".c" for s in sources):
        raise BakeError(f"guest init sources missing from {SOURCE_DIR}")
    compiler = _find_compiler()
    out = cache_dir / f"uniklab-init-{_cache_key(compiler, sources)}"
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".uniklab-init-", dir=cache_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        argv = [compiler, *CFLAGS, "-o", str(tmp), *(str(s) for s in sources if s.suffix == ".c")]
        try:
            local.run(argv, timeout=COMPILE_TIMEOUT)
        except CommandError as exc:
            raise BakeError(f"compiling the guest init failed: {exc}") from exc
        tmp.chmod(0o755)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("built guest init %s with %s", out, compiler)
    return out
