"""Compile the guest init (``init.c`` and friends, PID 1 of every Linux-kernel image), and
the vchan helper of Xen channels (``vchan/``).

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
    return _build("uniklab-init", "the guest init", _sources(), (), cache_dir)


# The vchan helper (issue 18, Xen channels): Debian's static Xen libraries (libxen-dev),
# in link order.  They are glibc-built; musl links them with fortify.c's few shims.
VCHAN_DIR = SOURCE_DIR / "vchan"
XEN_LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
XEN_STATIC = ("xenvchan", "xengnttab", "xenevtchn", "xenstore", "xentoolcore", "xentoollog")
XEN_HEADERS = Path("/usr/include")


def build_vchan(cache_dir: Path) -> Path:
    """The guest side of Xen channels (``vchan/vchan.c``), a static binary in
    ``cache_dir``, compiled if needed against Debian's static Xen libraries."""
    libs = [XEN_LIBDIR / f"lib{name}.a" for name in XEN_STATIC]
    missing = [str(lib) for lib in libs if not lib.is_file()]
    if missing or not (XEN_HEADERS / "libxenvchan.h").is_file():
        raise BakeError(
            "Xen channels need Debian's libxen-dev (libxenvchan.h and static Xen libraries;"
            f" missing: {', '.join(missing) or 'libxenvchan.h'}): apt-get install libxen-dev"
        )
    sources = sorted(VCHAN_DIR.glob("*.c"))
    # After the compiler's own headers: musl's libc headers come before the host's.
    extra = ("-idirafter", str(XEN_HEADERS), *map(str, libs))
    return _build("uniklab-vchan", "the vchan helper", sources, extra, cache_dir, libs)


def _build(
    name: str,
    what: str,
    sources: list[Path],
    extra: tuple[str, ...],
    cache_dir: Path,
    inputs: list[Path] | None = None,
) -> Path:
    """Compile ``sources`` (plus ``extra`` arguments) into ``cache_dir``/NAME-KEY once."""
    if not any(s.suffix == ".c" for s in sources):
        raise BakeError(f"{what}: sources missing from {SOURCE_DIR}")
    compiler = _find_compiler()
    out = cache_dir / f"{name}-{_cache_key(compiler, [*sources, *(inputs or [])])}"
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", dir=cache_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        c_files = [str(s) for s in sources if s.suffix == ".c"]
        argv = [compiler, *CFLAGS, "-o", str(tmp), *c_files, *extra]
        try:
            local.run(argv, timeout=COMPILE_TIMEOUT)
        except CommandError as exc:
            raise BakeError(f"compiling {what} failed: {exc}") from exc
        tmp.chmod(0o755)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("built %s %s with %s", what, out, compiler)
    return out
