"""Kernel modules for an image: resolve names through modules.dep into a load order.

Also reads the kernel release out of a bzImage, so the right /lib/modules tree is used.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from uniklab.errors import BakeError, CommandError
from uniklab.executor import local

__all__ = [
    "Compression",
    "KernelModule",
    "kernel_release_of",
    "module_bytes",
    "module_closure",
    "normalize_module_name",
]

Compression = Literal["none", "xz", "gz", "zst"]

_SUFFIXES: dict[str, Compression] = {
    ".ko": "none",
    ".ko.xz": "xz",
    ".ko.gz": "gz",
    ".ko.zst": "zst",
}


@dataclass(frozen=True)
class KernelModule:
    """One module to put in the image, and where its (possibly compressed) content lives."""

    name: str  # canonical: underscores, no suffix
    image_path: PurePosixPath  # /lib/modules/<release>/kernel/...ko, always uncompressed
    source: Path
    compression: Compression


def normalize_module_name(name: str) -> str:
    """The kernel treats dashes and underscores in module names alike; we use underscores."""
    base = name.rsplit("/", 1)[-1]
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _split_suffix(relpath: str) -> tuple[str, Compression]:
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if relpath.endswith(suffix):
            return relpath[: -len(suffix)] + ".ko", _SUFFIXES[suffix]
    raise BakeError(f"modules.dep: {relpath}: not a kernel module (.ko, .ko.xz, .ko.gz, .ko.zst)")


def _read_dep(moddir: Path) -> dict[str, tuple[str, list[str]]]:
    """modules.dep as {name: (relative path, [dependency paths as listed])}."""
    dep_file = moddir / "modules.dep"
    try:
        text = dep_file.read_text()
    except FileNotFoundError as exc:
        raise BakeError(f"{dep_file}: not found (is the kernel release right? run depmod)") from exc
    table: dict[str, tuple[str, list[str]]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        head, sep, tail = line.partition(":")
        if not sep:
            raise BakeError(f"{dep_file}:{lineno}: malformed line (no colon)")
        table.setdefault(normalize_module_name(head.strip()), (head.strip(), tail.split()))
    return table


def _read_builtin(moddir: Path) -> set[str]:
    path = moddir / "modules.builtin"
    if not path.is_file():
        return set()
    return {normalize_module_name(line.strip()) for line in path.read_text().splitlines() if line}


def module_closure(
    names: Sequence[str],
    *,
    kernel_release: str,
    modules_root: Path = Path("/lib/modules"),
) -> list[KernelModule]:
    """The named modules and everything they depend on, dependencies first, each once.

    Modules built into the kernel (modules.builtin) are skipped; an unknown name is an error.
    The order is stable: it follows the order of ``names`` and of modules.dep.
    """
    moddir = modules_root / kernel_release
    table = _read_dep(moddir)
    builtin = _read_builtin(moddir)
    by_path = {path: name for name, (path, _) in table.items()}
    image_root = PurePosixPath("/lib/modules", kernel_release)

    order: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def dep_name(path: str) -> str:
        return by_path.get(path, normalize_module_name(path))

    def visit(name: str, wanted_by: str | None) -> None:
        if name in done:
            return
        if name in visiting:
            raise BakeError(f"modules.dep: dependency cycle through {name}")
        if name not in table:
            if name in builtin:
                return
            who = f" (needed by {wanted_by})" if wanted_by else ""
            raise BakeError(f"unknown kernel module {name}{who} in {moddir}/modules.dep")
        visiting.add(name)
        # modules.dep lists a module's full transitive dependencies, each before what it
        # depends on (modprobe loads them in reverse); visiting reversed keeps that order
        # and stays correct even if a list were incomplete.
        for path in reversed(table[name][1]):
            visit(dep_name(path), name)
        visiting.discard(name)
        done.add(name)
        order.append(name)

    for raw in names:
        visit(normalize_module_name(raw), None)

    modules: list[KernelModule] = []
    for name in order:
        relpath = table[name][0]
        plain, compression = _split_suffix(relpath)
        source = Path(relpath) if relpath.startswith("/") else moddir / relpath
        if relpath.startswith("/"):
            try:
                plain = str(PurePosixPath(plain).relative_to(PurePosixPath(str(moddir))))
            except ValueError as exc:
                raise BakeError(f"modules.dep: {relpath} lies outside {moddir}") from exc
        if not source.is_file():
            raise BakeError(f"kernel module {name}: {source} listed in modules.dep is missing")
        modules.append(KernelModule(name, image_root / plain, source, compression))
    return modules


def module_bytes(m: KernelModule) -> bytes:
    """The uncompressed .ko content of a module."""
    try:
        if m.compression == "none":
            return m.source.read_bytes()
        if m.compression == "xz":
            return lzma.decompress(m.source.read_bytes())
        if m.compression == "gz":
            return gzip.decompress(m.source.read_bytes())
    except OSError as exc:
        raise BakeError(f"kernel module {m.name}: cannot read {m.source}: {exc}") from exc
    except lzma.LZMAError as exc:
        raise BakeError(f"kernel module {m.name}: bad xz data in {m.source}: {exc}") from exc
    return _unzstd(m)


def _unzstd(m: KernelModule) -> bytes:
    # The executor speaks text; the decompressed module goes through a file instead.
    if shutil.which("zstd") is None:
        raise BakeError(f"kernel module {m.name}: {m.source} is zstd-compressed; install zstd")
    with tempfile.TemporaryDirectory(prefix="uniklab-kmod-") as tmp:
        out = Path(tmp) / "module.ko"
        try:
            local.run(["zstd", "-d", "-q", "-f", "-o", str(out), str(m.source)], timeout=60)
        except CommandError as exc:
            raise BakeError(f"kernel module {m.name}: cannot decompress {m.source}: {exc}") from exc
        return out.read_bytes()


def kernel_release_of(kernel_image: Path) -> str:
    """The release (``uname -r``) of an x86 bzImage, from its boot-protocol header."""
    try:
        with open(kernel_image, "rb") as f:
            header = f.read(0x210)
            if len(header) < 0x210 or header[0x202:0x206] != b"HdrS":
                raise BakeError(f"{kernel_image}: not an x86 bzImage (no HdrS boot header)")
            (offset,) = struct.unpack_from("<H", header, 0x20E)
            if offset == 0:
                raise BakeError(f"{kernel_image}: bzImage header carries no version string")
            f.seek(offset + 0x200)
            raw = f.read(256)
    except OSError as exc:
        raise BakeError(f"{kernel_image}: cannot read kernel image: {exc.strerror}") from exc
    text = raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()
    release = text.split()[0] if text else ""
    if not release:
        raise BakeError(f"{kernel_image}: empty kernel version string in bzImage header")
    return release
