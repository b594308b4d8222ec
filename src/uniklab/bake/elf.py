"""ELF dependency closure without running ``ldd`` or the binary: read headers, search like ld.so.

The result maps each path inside the image to the real file on the host whose content goes
there, so the bake can copy libraries and the interpreter next to the application.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from uniklab import statcache
from uniklab.errors import BakeError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LIB_DIRS", "ElfInfo", "elf_closure", "elf_info"]

# ld.so's trusted directories, searched after the ld.so.conf directories (the cache).
DEFAULT_LIB_DIRS: tuple[str, ...] = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)

# What $LIB and $PLATFORM expand to, per machine.  Debian's glibc expands $LIB to the
# multiarch directory (checked with LD_DEBUG=libs); upstream glibc uses lib64.
_DST_LIB: dict[str, tuple[str, ...]] = {
    "EM_X86_64": ("lib/x86_64-linux-gnu", "lib64"),
    "EM_AARCH64": ("lib/aarch64-linux-gnu", "lib64"),
    "EM_386": ("lib/i386-linux-gnu", "lib"),
}
# glibc's x86 ld.so names the platform after the CPU (sysdeps/x86/cpu-features.c:
# "haswell" with AVX2/BMI/FMA/MOVBE…, "xeon_phi" with AVX512ER), not the kernel's
# AT_PLATFORM: `ld.so --list-diagnostics` says dl_platform="haswell" on such a machine.
# The CPU that will run the image is not known when it is baked, so every name ld.so may
# use is searched, the CPU-specific ones first as ld.so has them.
_DST_PLATFORM: dict[str, tuple[str, ...]] = {
    "EM_X86_64": ("haswell", "xeon_phi", "x86_64"),
    "EM_AARCH64": ("aarch64",),
    "EM_386": ("i686",),
}

_ELF_MAGIC = b"\x7fELF"
_MAX_SYMLINKS = 40


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader would read from one file's ELF headers."""

    is_elf: bool
    elf_class: int = 0  # 32 or 64; 0 when not an ELF
    machine: str = ""  # e_machine as pyelftools names it, e.g. "EM_X86_64"
    interp: str | None = None  # PT_INTERP
    needed: tuple[str, ...] = ()  # DT_NEEDED, in order
    rpath: tuple[str, ...] = ()  # DT_RPATH entries (unexpanded)
    runpath: tuple[str, ...] = ()  # DT_RUNPATH entries (unexpanded)
    is_static: bool = False  # no interpreter and no DT_NEEDED: nothing to add
    soname: str | None = None  # DT_SONAME


def elf_info(path: Path) -> ElfInfo:
    """Read the ELF headers of ``path`` (symlinks followed); ``is_elf`` is False for other files.

    Remembered while the file is unchanged (``uniklab.statcache``)."""
    known = statcache.get(path, "elf")
    if isinstance(known, dict):
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in known.items()
        }
        with contextlib.suppress(TypeError):
            return ElfInfo(**fields)
    info = _read_info(path)
    statcache.put(path, "elf", dataclasses.asdict(info))
    return info


def _read_info(path: Path) -> ElfInfo:
    try:
        with open(path, "rb") as f:
            if f.read(4) != _ELF_MAGIC:
                return ElfInfo(is_elf=False)
            f.seek(0)
            return _parse(ELFFile(f))
    except FileNotFoundError as exc:
        raise BakeError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise BakeError(f"{path}: is a directory, not an ELF file") from exc
    except OSError as exc:
        raise BakeError(f"{path}: cannot read: {exc.strerror}") from exc
    except (ELFError, struct.error, ValueError) as exc:
        raise BakeError(f"{path}: malformed ELF file: {exc}") from exc


def _parse(elf: ELFFile) -> ElfInfo:
    interp: str | None = None
    dynamic: DynamicSegment | DynamicSection | None = None
    for seg in elf.iter_segments():
        ptype = seg["p_type"]
        if ptype == "PT_INTERP" and isinstance(seg, InterpSegment):
            interp = str(seg.get_interp_name())
        elif ptype == "PT_DYNAMIC" and isinstance(seg, DynamicSegment):
            dynamic = seg
    if dynamic is None:  # a file without program headers (a relocatable object, say)
        sec = elf.get_section_by_name(".dynamic")
        if isinstance(sec, DynamicSection):
            dynamic = sec
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname: str | None = None
    if dynamic is not None:
        for tag in dynamic.iter_tags():
            # pyelftools sets these string attributes per tag kind at run time.
            kind = tag.entry.d_tag
            if kind == "DT_NEEDED":
                needed.append(str(getattr(tag, "needed")))  # noqa: B009
            elif kind == "DT_RPATH":
                rpath.extend(p for p in str(getattr(tag, "rpath")).split(":") if p)  # noqa: B009
            elif kind == "DT_RUNPATH":
                runpath.extend(p for p in str(getattr(tag, "runpath")).split(":") if p)  # noqa: B009
            elif kind == "DT_SONAME":
                soname = str(getattr(tag, "soname"))  # noqa: B009
    return ElfInfo(
        is_elf=True,
        elf_class=elf.elfclass,
        machine=elf["e_machine"],
        interp=interp,
        needed=tuple(needed),
        rpath=tuple(rpath),
        runpath=tuple(runpath),
        is_static=interp is None and not needed,
        soname=soname,
    )


def _header_arch(path: Path) -> tuple[int, str] | None:
    """Class and machine of an ELF file; None if it is not a readable ELF."""
    try:
        info = elf_info(path)
    except BakeError:
        return None
    return (info.elf_class, info.machine) if info.is_elf else None


@dataclass
class _Loaded:
    """One object in the simulated link map."""

    image: PurePosixPath
    source: Path
    info: ElfInfo
    loader: _Loaded | None
    by: str  # the binary or library that first needed it, for error messages
    rpath_dirs: list[PurePosixPath] = field(default_factory=list)
    runpath_dirs: list[PurePosixPath] = field(default_factory=list)


class _Resolver:
    """Searches for libraries the way glibc's ld.so does, with every path taken under ``root``."""

    def __init__(self, root: Path, elf_class: int, machine: str) -> None:
        self.root = root
        self.elf_class = elf_class
        self.machine = machine
        self.conf_dirs = _ld_so_conf_dirs(root)
        self.skipped: list[str] = []  # incompatible candidates seen for the current lookup

    def dst_lib(self) -> str:
        for cand in _DST_LIB.get(self.machine, ("lib64",)):
            if self.resolve_in_root(PurePosixPath("/", cand)).is_dir():
                return cand
        return _DST_LIB.get(self.machine, ("lib64",))[0]

    def expand(self, entries: Sequence[str], origin: PurePosixPath) -> list[PurePosixPath]:
        out: list[PurePosixPath] = []
        for raw in entries:
            p = raw
            for token, value in (("ORIGIN", str(origin)), ("LIB", self.dst_lib())):
                p = p.replace("${" + token + "}", value).replace("$" + token, value)
            platforms = _DST_PLATFORM.get(self.machine, ("",))
            if "$PLATFORM" not in p and "${PLATFORM}" not in p:
                platforms = platforms[:1]
            for platform in platforms:
                q = p.replace("${PLATFORM}", platform).replace("$PLATFORM", platform)
                if not q.startswith("/"):
                    # ld.so would resolve a relative entry against the process's cwd; in a
                    # baked image that is "/", so treat it as image-absolute.
                    q = "/" + q
                path = PurePosixPath(os.path.normpath(q))
                if path not in out:
                    out.append(path)
        return out

    def compatible(self, path: Path) -> bool:
        arch = _header_arch(path)
        if arch == (self.elf_class, self.machine):
            return True
        if arch is not None:
            self.skipped.append(f"{path} ({arch[0]}-bit {arch[1]})")
        return False

    def search(self, name: str, dirs: Sequence[PurePosixPath]) -> PurePosixPath | None:
        for d in dirs:
            image = d / name
            host = self.resolve_in_root(image)
            if host.is_file() and self.compatible(host):
                return image
        return None

    def resolve_in_root(self, image: PurePosixPath) -> Path:
        """Follow symlinks as the guest would: absolute targets are taken under ``root``."""
        parts = list(image.parts[1:])
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            cur = self.root.joinpath(*done, part)
            if cur.is_symlink():
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise BakeError(f"{image}: too many levels of symbolic links")
                target = os.readlink(cur)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p] + parts
            else:
                done.append(part)
        return self.root.joinpath(*done)


def _ld_so_conf_dirs(root: Path) -> list[PurePosixPath]:
    """Directories from /etc/ld.so.conf and its ``include``s, in order, without repeats."""
    dirs: list[PurePosixPath] = []
    seen_files: set[Path] = set()

    def parse(conf: Path, conf_dir: PurePosixPath) -> None:
        if conf in seen_files or not conf.is_file():
            return
        seen_files.add(conf)
        for line in conf.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include") and line[7:8].isspace():
                for pattern in line[8:].split():
                    # Relative includes are relative to the including file, as in ldconfig.
                    image_pattern = conf_dir / pattern
                    host_pattern = str(root.joinpath(*image_pattern.parts[1:]))
                    for match in sorted(glob.glob(host_pattern)):
                        parse(Path(match), PurePosixPath(image_pattern).parent)
            elif line.startswith("hwcap"):
                continue
            else:
                for entry in line.replace(",", " ").split():
                    if entry.startswith("/"):
                        d = PurePosixPath(os.path.normpath(entry))
                        if d not in dirs:
                            dirs.append(d)

    parse(root / "etc" / "ld.so.conf", PurePosixPath("/etc"))
    return dirs


def _origin(binary: Path, root: Path) -> PurePosixPath:
    """The image directory $ORIGIN names for a binary placed at its own path (under root)."""
    real = binary.resolve()
    try:
        rel = real.relative_to(root.resolve())
        return PurePosixPath("/", *rel.parts).parent
    except ValueError:
        return PurePosixPath(real).parent


def elf_closure(
    binaries: Sequence[Path],
    *,
    extra_libs: Sequence[str] = (),
    root: Path = Path("/"),
) -> dict[PurePosixPath, Path]:
    """Libraries and interpreter the binaries need: {path inside the image: host file to copy}.

    The binaries themselves are not included.  Each library is placed in the directory ld.so
    would find it in, under its DT_NEEDED name; its content is that of the resolved symlink.
    ``extra_libs`` are dlopen()ed libraries (names searched like DT_NEEDED of the first binary,
    or absolute image paths); they and their closure are added too.  $ORIGIN assumes each
    binary sits in the image at the same path it has under ``root``.
    """
    result: dict[PurePosixPath, Path] = {}
    arch: tuple[int, str, Path] | None = None
    for binary in binaries:
        info = elf_info(binary)
        if not info.is_elf:
            raise BakeError(f"{binary}: not an ELF file")
        if arch is None:
            arch = (info.elf_class, info.machine, binary)
        elif (info.elf_class, info.machine) != arch[:2]:
            raise BakeError(
                f"{binary}: arch mismatch: {info.elf_class}-bit {info.machine}, "
                f"but {arch[2]} is {arch[0]}-bit {arch[1]}"
            )
        resolver = _Resolver(root, info.elf_class, info.machine)
        main = _Loaded(
            image=_origin(binary, root) / binary.name,
            source=binary.resolve(),
            info=info,
            loader=None,
            by=str(binary),
        )
        main.rpath_dirs = resolver.expand(info.rpath if not info.runpath else (), main.image.parent)
        main.runpath_dirs = resolver.expand(info.runpath, main.image.parent)
        interp_obj: _Loaded | None = None
        if info.interp is not None:
            interp = PurePosixPath(info.interp)
            src = resolver.resolve_in_root(interp)
            if not src.is_file():
                raise BakeError(f"{binary}: interpreter {interp} not found under {root}")
            _check_arch(src, resolver, binary)
            _add(result, interp, src)
            interp_obj = _Loaded(interp, src, elf_info(src), loader=None, by=str(interp))
        extras = extra_libs if binary == binaries[0] else ()
        for image, src in _walk(main, interp_obj, extras, resolver):
            _add(result, image, src)
    if extra_libs and not binaries:
        raise BakeError("extra libraries need at least one binary to set the architecture")
    statcache.save()
    return result


def _add(result: dict[PurePosixPath, Path], image: PurePosixPath, src: Path) -> None:
    if image in result and result[image] != src:
        raise BakeError(f"{image}: two different files resolve here ({result[image]}, {src})")
    result[image] = src


def _check_arch(src: Path, resolver: _Resolver, wanted_by: Path | str) -> None:
    arch = _header_arch(src)
    if arch is None:
        raise BakeError(f"{src}: not an ELF file (needed by {wanted_by})")
    if arch != (resolver.elf_class, resolver.machine):
        raise BakeError(
            f"{src}: arch mismatch: {arch[0]}-bit {arch[1]}, but {wanted_by} is "
            f"{resolver.elf_class}-bit {resolver.machine}"
        )


def _walk(
    main: _Loaded, interp: _Loaded | None, extra_libs: Sequence[str], resolver: _Resolver
) -> Iterator[tuple[PurePosixPath, Path]]:
    """Breadth-first over DT_NEEDED, as ld.so loads them; each name is loaded once."""
    loaded: dict[str, _Loaded] = {}  # by DT_NEEDED name and by SONAME
    if interp is not None:
        # ld.so is in the link map before anything else: libc's DT_NEEDED on it matches there.
        loaded[str(interp.image)] = interp
        loaded[interp.image.name] = interp
        if interp.info.soname:
            loaded[interp.info.soname] = interp
    queue: deque[tuple[str, _Loaded]] = deque((n, main) for n in main.info.needed)
    queue.extend((n, main) for n in extra_libs)
    while queue:
        name, loader = queue.popleft()
        if name in loaded:
            continue
        image = _locate(name, loader, main, resolver)
        src = resolver.resolve_in_root(image)
        if "/" in name:
            _check_arch(src, resolver, loader.by)
        info = elf_info(src)
        obj = _Loaded(image=image, source=src, info=info, loader=loader, by=str(image))
        obj.rpath_dirs = resolver.expand(info.rpath if not info.runpath else (), image.parent)
        obj.runpath_dirs = resolver.expand(info.runpath, image.parent)
        loaded[name] = obj
        if info.soname:
            loaded.setdefault(info.soname, obj)
        yield image, src
        queue.extend((n, obj) for n in info.needed)


def _locate(name: str, loader: _Loaded, main: _Loaded, resolver: _Resolver) -> PurePosixPath:
    if "/" in name:
        image = PurePosixPath(os.path.normpath(name if name.startswith("/") else "/" + name))
        if not resolver.resolve_in_root(image).is_file():
            raise BakeError(f"library {name} not found (needed by {loader.by})")
        return image
    resolver.skipped = []
    dirs: list[PurePosixPath] = []
    if not loader.info.runpath:
        obj: _Loaded | None = loader
        while obj is not None:
            dirs.extend(obj.rpath_dirs)
            obj = obj.loader
        dirs.extend(main.rpath_dirs)
    # LD_LIBRARY_PATH would come here; a baked image does not inherit the host's.
    dirs.extend(loader.runpath_dirs)
    dirs.extend(resolver.conf_dirs)
    dirs.extend(PurePosixPath(d) for d in DEFAULT_LIB_DIRS)
    found = resolver.search(name, dirs)
    if found is None:
        hint = f"; skipped incompatible {', '.join(resolver.skipped)}" if resolver.skipped else ""
        raise BakeError(f"library {name} not found (needed by {loader.by}){hint}")
    log.debug("%s: %s => %s", loader.by, name, found)
    return found
