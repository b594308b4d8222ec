"""Bring your own image: a rumprun unikernel baked elsewhere (``rumprun-bake`` output, for
``hw_virtio`` or ``xen_pv``) imported into the image store as a ``kind = "rumprun"`` image.

What the file is, is read from the file itself (``detect_platform``):

* it must be an x86 ELF (rumprun-bake links one; uniklab's guests are x86);
* it must be a rumprun unikernel: its bytes hold ``rumprun`` (rumprun's own symbols and
  messages, e.g. ``rumprun_main1``) and ``NetBSD`` (the rump kernel's copyright and
  version strings).  A Linux program, a Linux kernel or a data file has neither both;
* ``hw`` (booted by QEMU): a multiboot header, the magic ``0x1BADB002`` whose checksum
  makes magic + flags + checksum zero, 4-byte aligned in the first 8192 bytes (the
  multiboot spec's rule, what QEMU's ``-kernel`` looks for);
* ``xen_pv`` (booted by Xen): a ``__xen_guest`` section (the legacy ``GUEST_OS=...``
  string rumprun's xen platform links) or an ELF note named ``Xen``
  (``XEN_ELFNOTE_*``, in a ``SHT_NOTE`` section or a ``PT_NOTE`` segment).

The image holds the kernel (``kernel-<platform>``) and optional data disks (mounted by
rumprun at boot, as rumprun-packages' ``data.iso`` is).  Its digest covers the kernel's
and the disks' bytes and every option, not the file's path or the image's name: importing
the same inputs again reuses the stored image.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
import shutil
import struct
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection
from elftools.elf.segments import NoteSegment
from pydantic import ValidationError

from uniklab import validate
from uniklab.bake.image import ImageDisk, ImageStore, Manifest
from uniklab.bake.recipe import ProbeSpec
from uniklab.bake.rumprun import rumprun_manifest
from uniklab.errors import BakeError, NotFoundError, UsageError
from uniklab.guest import console as guest_console
from uniklab.guest.rumprun import RumprunConfig

Platform = Literal["qemu", "xen"]
PLATFORMS: tuple[Platform, ...] = ("qemu", "xen")
# What each backend boots, in rumprun-bake's words.
TARGETS: dict[Platform, str] = {"qemu": "hw_virtio", "xen": "xen_pv"}

FORMAT = 1  # bump when an imported image's layout changes
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192
XEN_SECTION = "__xen_guest"
XEN_NOTE_NAME = "Xen"
RUMPRUN_MARKERS = (b"rumprun", b"NetBSD")
X86_MACHINES = ("EM_X86_64", "EM_386")
_ELF_MAGIC = b"\x7fELF"
_CHUNK = 1 << 20


def default_name(path: str | Path) -> str:
    """An image name made of a file's name (``redis-server.bin`` → ``redis-server``)."""
    name = re.sub(r"[^a-z0-9_.-]", "-", Path(path).stem.lower()).lstrip("-._")
    if not name:
        raise UsageError(f"cannot make an image name of {_shown(path)}: give --name")
    return name[:63]


def detect_platform(path: str | Path) -> Platform:
    """``"qemu"`` for a rumprun ``hw`` kernel (multiboot), ``"xen"`` for ``xen_pv``.

    A file that is not a rumprun unikernel (see the module's docstring for what is
    checked), or holds both signatures or neither, is refused with one line."""
    src = _readable(Path(path))
    return _platform(None, _signatures(src), src)


def import_image(
    store: ImageStore,
    path: str | Path,
    *,
    name: str,
    tag: str = "latest",
    platform: str | None = None,
    args: Sequence[str] = (),
    ports: Sequence[int] = (),
    memory: str = "64M",
    probe: ProbeSpec | None = None,
    disks: Sequence[tuple[str | Path, str]] = (),
    argv0: str | None = None,
) -> Manifest:
    """Copy a rumprun unikernel (and its data disks, ``(file, mount point)``) into the
    store as image ``name:tag``; the manifest, named so (the caller indexes it).

    ``platform``: ``"qemu"``, ``"xen"``, or ``None``/``"auto"`` (read from the file; a
    platform given must match the file).  The app is started as ``[argv0, *args]``
    (``argv0``: the file's stem by default).  Ready: TCP on the first of ``ports``, or
    with none, rumprun saying it calls the app's ``main()`` on the console."""
    start = time.monotonic()
    validate.image_ref(f"{name}:{tag}")
    src = _readable(Path(path))
    if argv0 is not None and not argv0.strip():
        raise UsageError("argv0, the program's name, cannot be empty")
    argv = [argv0 if argv0 is not None else src.stem, *validate.args(list(args))]
    port_list = _ports(ports)
    validate.memory_mb(memory)
    mounts = [_mount(m) for _, m in disks]
    if len(set(mounts)) != len(mounts):
        raise UsageError(f"two disks are mounted at {_first_dup(mounts)}")
    try:
        RumprunConfig(argv=argv, mounts=mounts).cmdline()  # what boot will check
    except ValidationError as exc:
        raise UsageError(validate.first_problem(exc, "entrypoint")) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ready = _probe(probe, port_list)
    disk_files = [_readable(Path(f), "disk") for f, _ in disks]
    found = _signatures(src)
    chosen = _platform(platform, found, src)

    staging = store.staging()
    try:
        kernel_file = f"kernel-{chosen}"
        kernel_sha = _copy(src, staging / kernel_file)
        image_disks: list[ImageDisk] = []
        disk_shas: list[str] = []
        for i, (disk, mount) in enumerate(zip(disk_files, mounts, strict=True)):
            stored = _disk_name(disk, i, {d.file for d in image_disks})
            disk_shas.append(_copy(disk, staging / stored))
            size = (staging / stored).stat().st_size
            image_disks.append(ImageDisk(file=stored, mount=mount, size=size))
        digest = _digest(
            {
                "format": FORMAT,
                "platform": chosen,
                "kernel": kernel_sha,
                "disks": [[sha, d.mount] for sha, d in zip(disk_shas, image_disks, strict=True)],
                "entrypoint": argv,
                "ports": port_list,
                "memory": memory,
                "probe": ready.model_dump(mode="json"),
            }
        )
        if store.has(digest):
            shutil.rmtree(staging, ignore_errors=True)
            return store.manifest(digest).model_copy(update={"name": name, "tag": tag})
        manifest = rumprun_manifest(
            staging,
            name=name,
            tag=tag,
            digest=digest,
            kernels={chosen: kernel_file},
            release="rumprun (imported)",
            source=str(src),
            disks=image_disks,
            entrypoint=argv,
            ports=port_list,
            probe=ready,
            memory=memory,
            seconds=time.monotonic() - start,
        )
        store.commit(staging, manifest)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BakeError(f"cannot import {_shown(src)} into {store.root}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------- what the file is


def _signatures(path: Path) -> list[Platform]:
    """The platforms ``path`` has a kernel signature of, after checking it is an x86 ELF
    holding a rumprun unikernel."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(MULTIBOOT_SEARCH)
            if not head.startswith(_ELF_MAGIC):
                raise UsageError(f"{_shown(path)} is not a rumprun unikernel (not an ELF file)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                missing = [m.decode() for m in RUMPRUN_MARKERS if data.find(m) < 0]
            if missing:
                raise UsageError(
                    f"{_shown(path)} is not a rumprun unikernel (no {' or '.join(missing)} "
                    "in it: give rumprun-bake's output)"
                )
            fh.seek(0)
            machine, xen = _elf_facts(fh, path)
    except OSError as exc:
        raise UsageError(f"cannot read {_shown(path)}: {exc.strerror or exc}") from None
    if machine not in X86_MACHINES:
        raise UsageError(f"{_shown(path)} is a rumprun unikernel for {machine}, not x86")
    found: list[Platform] = []
    if _has_multiboot(head):
        found.append("qemu")
    if xen:
        found.append("xen")
    return found


def _has_multiboot(head: bytes) -> bool:
    """A multiboot (v1) header: magic, flags, checksum summing to 0, 4-byte aligned."""
    for off in range(0, min(len(head), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", head, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return True
    return False


def _elf_facts(fh: BinaryIO, path: Path) -> tuple[str, bool]:
    """(e_machine, whether it carries Xen's PV signature), read with pyelftools."""
    try:
        elf = ELFFile(fh)
        machine = str(elf["e_machine"])
        if elf.get_section_by_name(XEN_SECTION) is not None:
            return machine, True
        notes: list[NoteSection | NoteSegment] = [
            *(s for s in elf.iter_sections() if isinstance(s, NoteSection)),
            *(s for s in elf.iter_segments() if isinstance(s, NoteSegment)),
        ]
        for part in notes:
            if any(note["n_name"] == XEN_NOTE_NAME for note in part.iter_notes()):
                return machine, True
        return machine, False
    except OSError:
        raise
    except Exception as exc:  # a damaged ELF: pyelftools raises many kinds of error
        raise UsageError(f"{_shown(path)} is not a readable ELF file: {exc}") from None


def _platform(given: str | None, found: list[Platform], path: Path) -> Platform:
    if given in (None, "auto"):
        if len(found) == 1:
            return found[0]
        if not found:
            raise UsageError(
                f"{_shown(path)} is a rumprun unikernel for neither hw (no multiboot header) "
                "nor xen_pv (no __xen_guest section or Xen note)"
            )
        raise UsageError(f"{_shown(path)} looks like both a hw and a xen_pv kernel: name one")
    if given not in PLATFORMS:
        raise UsageError(f"invalid platform {validate.short(given)}: auto, qemu or xen")
    if given not in found:
        what = " or ".join(TARGETS[p] for p in found) or "no platform uniklab boots"
        raise UsageError(
            f"{_shown(path)} is not a {TARGETS[given]} kernel for {given} (it is {what})"
        )
    return given


# ---------------------------------------------------------------- options


def _readable(path: Path, what: str = "file") -> Path:
    try:
        resolved = path.absolute()
        if not resolved.exists():
            raise NotFoundError(f"no {what} {_shown(path)}")
        if not resolved.is_file():
            raise UsageError(f"{what} {_shown(path)} is not a regular file")
        if resolved.stat().st_size == 0:
            raise UsageError(f"{what} {_shown(path)} is empty")
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, no permission
        raise UsageError(f"{what} {_shown(path)}: {exc}") from None
    return resolved


def _ports(ports: Sequence[int]) -> list[int]:
    if isinstance(ports, str | bytes):
        raise UsageError(f"invalid ports {validate.short(ports)}: a list of port numbers")
    out = [validate.port(p) for p in ports]
    if len(set(out)) != len(out):
        raise UsageError(f"port {_first_dup(out)} listed twice")
    return out


def _mount(mount: str) -> str:
    """A rumprun mount point: absolute, not '/', no '..', no spaces, quotes, backslashes."""
    bad = not isinstance(mount, str) or re.search(r"[\s\"'\\\x00-\x1f\x7f]", mount)
    p = PurePosixPath(mount) if not bad else PurePosixPath("")
    if bad or not p.is_absolute() or ".." in p.parts or str(p) == "/":
        raise UsageError(
            f"invalid mount point {validate.short(mount)}: an absolute path without spaces"
        )
    return str(p)


def _probe(probe: ProbeSpec | None, ports: list[int]) -> ProbeSpec:
    if probe is None:
        if ports:
            return ProbeSpec(kind="tcp", port=ports[0])
        return ProbeSpec(kind="console", marker=guest_console.RUMPRUN_CALLING_RE.pattern)
    if probe.kind == "console":
        if probe.marker is None:
            return probe.model_copy(update={"marker": guest_console.RUMPRUN_CALLING_RE.pattern})
        return probe
    port = probe.port if probe.port is not None else (ports[0] if ports else None)
    if port is None:
        raise UsageError(f"probe {probe.kind} needs a port (give one, or ports)")
    if ports and port not in ports:
        raise UsageError(f"probe port {port} is not one of ports {ports}")
    return probe.model_copy(update={"port": port})


def _first_dup(values: Sequence[object]) -> object:
    return next(v for i, v in enumerate(values) if v in values[:i])


# ---------------------------------------------------------------- files


def _copy(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` (mode 0644) and return the sha256 of what was copied."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
    dest.chmod(0o644)
    return h.hexdigest()


def _disk_name(path: Path, index: int, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name).lstrip(".") or "disk"
    name = f"disk-{base}"
    return name if name not in taken else f"disk{index}-{base}"


def _digest(doc: dict[str, object]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _shown(path: str | Path) -> str:
    return validate.short(str(path), 200)
