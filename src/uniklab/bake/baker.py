"""Baking: a recipe (or a binary) becomes a kernel + root image in the store.

The root holds only the application, the libraries its ELF headers name (and those the
recipe says it dlopens), the kernel modules it needs in load order, a tiny static init,
and ``/uniklab/image.json`` telling the init what to run.  It is an initramfs (any
kernel, QEMU and Xen) or a read-only erofs disk (a kernel with erofs and virtio-blk built
in: the specialised one; QEMU), see ``uniklab.bake.erofs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from uniklab import buildcache, faults, statcache
from uniklab.bake import cpio, elf, erofs, kmod, rumprun, source
from uniklab.bake.image import ImageStore, KernelInfo, Manifest
from uniklab.bake.kernel_choice import HOST, KernelChoice, choose_kernel
from uniklab.bake.recipe import Recipe, builtin_dir
from uniklab.buildcache import Progress
from uniklab.digest import sha256_known
from uniklab.errors import BakeError, UsageError
from uniklab.guest.build import build_init

log = logging.getLogger(__name__)

# Bump when the image layout changes, so old cached images are not reused.
FORMAT = 4
INITRAMFS = "initramfs"
EROFS = "erofs"
ROOTS = (INITRAMFS, EROFS)
# The kernel mounts a disk root itself; its device is the first virtio-blk disk.
EROFS_CMDLINE = "root=/dev/vda rootfstype=erofs ro init=/init"
# What every image needs to reach the network (and channels: virtio_console) on QEMU's
# microvm (virtio-mmio).
# The same image boots on both backends: virtio for QEMU's microvm, netfront for Xen PV
# (each driver refuses to load where its bus is absent, and the init only warns).
BASE_MODULES = ("virtio_mmio", "virtio_pci", "virtio_net", "virtio_console", "xen_netfront")
# Each backend adds its own console= (ttyS0 on QEMU, hvc0 on Xen).
BASE_CMDLINE = "reboot=t panic=-1 quiet"
# glibc >= 2.34 has the "files" NSS service built in, so getpwnam() needs no dlopen'd
# libnss_files.so.2 once this file names it (older glibc: list libnss_files.so.2 in libs).
# glibc dlopens libgcc_s for pthread_exit and cancellation, and abort()s without it
# ("libgcc_s.so.1 must be installed for pthread_exit to work"): a threaded server (Apache's
# event MPM) dies at its first idle-thread exit.  Every glibc image gets it.
GLIBC_DLOPENS = ("libgcc_s.so.1",)
NSSWITCH = b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"


@dataclass(frozen=True)
class BakeResult:
    manifest: Manifest
    cached: bool
    seconds: float


@dataclass(frozen=True)
class _Inputs:
    """Everything that decides an image's bytes, resolved on the host."""

    recipe: Recipe
    recipe_dir: Path | None
    binary: Path
    kernel: KernelChoice
    libs: dict[PurePosixPath, Path]
    modules: list[kmod.KernelModule]
    init: Path
    compression: str = ""  # set by _choose_compression
    root: str = ""  # set by _choose_root

    def digest(self) -> str:
        h = hashlib.sha256()
        doc = {
            "format": FORMAT,
            "recipe": self.recipe.model_dump(mode="json"),
            "binary": sha256_known(self.binary),
            "kernel": sha256_known(self.kernel.path),
            "kernel_choice": self.kernel.label,
            "init": sha256_known(self.init),
            "libs": {str(k): sha256_known(v) for k, v in sorted(self.libs.items())},
            "modules": [(str(m.image_path), sha256_known(m.source)) for m in self.modules],
            "files": [self._file_digest(f.src, f.content) for f in self.recipe.files],
            "compression": self.compression,
            "root": self.root,
        }
        h.update(json.dumps(doc, sort_keys=True).encode())
        statcache.save()
        return "sha256:" + h.hexdigest()

    def _file_digest(self, src: str | None, content: str | None) -> str:
        if src is not None:
            return sha256_known(self.resolve_src(src))
        return hashlib.sha256((content or "").encode()).hexdigest()

    def resolve_src(self, src: str) -> Path:
        """The host file behind a recipe's ``src``: relative to the recipe's directory (and
        staying in it, symlinks resolved), or absolute for a built-in recipe."""
        if Path(src).is_absolute():
            if self.recipe_dir is not None:
                raise BakeError(f"recipe file {src!r}: host paths only in built-in recipes")
            path = Path(src).resolve()
        else:
            base = (self.recipe_dir or builtin_dir()).resolve()
            path = (base / src).resolve()
            if not path.is_relative_to(base):
                raise BakeError(f"recipe file {src!r} escapes the recipe's directory")
        if not path.is_file():
            raise BakeError(f"recipe file {src!r} not found ({path})")
        return path


def _resolve(
    recipe: Recipe,
    recipe_dir: Path | None,
    cache: Path,
    kernel_spec: str = HOST,
    say: Progress | None = None,
) -> _Inputs:
    if recipe.build is not None:
        binary = source.build(recipe.build, progress=say)
    else:
        binary = Path(recipe.binary or "")
        if not binary.exists():
            hint = f" (install the Debian package: apt-get install {recipe.package})"
            raise BakeError(
                f"{recipe.name}: binary {binary} not found{hint if recipe.package else ''}"
            )
        binary = binary.resolve()
    kernel = choose_kernel(kernel_spec, progress=say)
    modules: list[kmod.KernelModule] = []
    if kernel.wants_modules:
        wanted = [*BASE_MODULES, *recipe.modules]
        modules = kmod.module_closure(wanted, kernel_release=kernel.release)
    elif recipe.modules:
        # A specialised kernel has everything built in; a user's kernel file has no
        # module tree uniklab knows.  The image's init loads nothing.
        log.info("%s: kernel %s: modules %s not loaded", recipe.name, kernel.label, recipe.modules)
    libs = elf.elf_closure([binary], extra_libs=recipe.libs)
    if any(p.name == "libc.so.6" for p in libs):
        extra = [lib for lib in GLIBC_DLOPENS if not any(p.name == lib for p in libs)]
        if extra:
            libs = elf.elf_closure([binary], extra_libs=[*recipe.libs, *extra])
    # Machine-wide, like kernels and source builds: a fresh UNIKLAB_HOME bakes without
    # compiling the init again.
    init = build_init(buildcache.root("init", "UNIKLAB_INIT_CACHE"))
    return _Inputs(recipe, recipe_dir, binary, kernel, libs, modules, init)


def _choose_root(root: str | None, kernel: KernelChoice) -> str:
    """erofs where the kernel mounts it without modules (it lowers the memory floor and the
    boot time: bench_small.py), an initramfs otherwise."""
    if root is None:
        return EROFS if kernel.kind != HOST and kernel.boots_erofs else INITRAMFS
    unfit = kernel.kind == HOST or (kernel.config is not None and not kernel.boots_erofs)
    if root == EROFS and unfit:
        raise UsageError(
            f"--root erofs needs a kernel with erofs and virtio-blk built in, not {kernel.label}"
            " (use --kernel specialised)"
        )
    return root


def _choose_compression(compression: str | None, root: str, kernel: KernelChoice) -> str:
    if root == EROFS:
        # erofs compresses with lz4 (high compression) or not at all.
        if compression not in (None, "lz4", "none"):
            raise UsageError(f"an erofs root is compressed with lz4 or none, not {compression}")
        return compression or "lz4"
    if compression is None:
        # A small guest holds the compressed initrd and the unpacked root at once while it
        # boots: gzip's 2.8 MB less is what lets a specialised kernel serve Redis in 48 MB
        # (lz4 needs ~64 MB), and under TCG it boots as fast (measured: bench_small.py).
        return cpio.DEFAULT_COMPRESSION if kernel.kind == HOST else "gzip"
    return compression


def _cmdline(kernel: KernelChoice, root: str) -> str:
    if root == EROFS:
        return f"{BASE_CMDLINE} {EROFS_CMDLINE}"
    if kernel.kind == HOST:
        return BASE_CMDLINE
    # With CONFIG_TMPFS the initramfs is unpacked into a tmpfs capped at half the RAM the
    # kernel sees, so a 17 MB root fails to unpack ("write error") below ~64 MB; ramfs has
    # no cap, which is what lets a small guest hold the app at all.
    return f"{BASE_CMDLINE} rootfstype=ramfs"


def _archive(inp: _Inputs) -> tuple[cpio.CpioArchive, int]:
    """The image's tree (as a cpio archive) and its number of files."""
    arc = cpio.CpioArchive()
    for d in ("/dev", "/proc", "/sys", "/tmp", "/run", "/etc", "/bin", "/sbin", "/uniklab"):
        arc.add_dir(d)
    arc.add_device("/dev/console", "c", 5, 1)
    arc.add_device("/dev/null", "c", 1, 3, mode=0o666)
    arc.add_file_from("/init", inp.init, mode=0o755)
    # What a guest kernel runs for an orderly poweroff (Xen's `xl shutdown`): the init,
    # which asks PID 1 to end the app first.
    arc.add_symlink("/sbin/poweroff", "/init")
    arc.add_file_from(inp.recipe.image_binary_path, inp.binary, mode=0o755)
    for dest, src in sorted(inp.libs.items()):
        arc.add_file_from(str(dest), src)
    for m in inp.modules:
        arc.add_file(str(m.image_path), kmod.module_bytes(m))
    rec = inp.recipe
    for dspec in rec.dirs:
        arc.add_dir(dspec.path, mode=dspec.mode)
    if rec.docroot is not None:
        arc.add_dir(rec.docroot)
        if rec.page is not None:
            arc.add_file(str(PurePosixPath(rec.docroot) / "index.html"), rec.page.encode())
    for f in rec.files:
        if f.src is not None:
            arc.add_file_from(f.dest, inp.resolve_src(f.src), mode=f.mode)
        else:
            arc.add_file(f.dest, (f.content or "").encode(), mode=f.mode)
    arc.add_file("/etc/passwd", rec.passwd().encode())
    arc.add_file("/etc/group", rec.group().encode())
    arc.add_file("/etc/nsswitch.conf", NSSWITCH)
    # The init writes the DHCP server's resolvers here; /run is a tmpfs on every root.
    arc.add_symlink("/etc/resolv.conf", "/run/resolv.conf")
    image_doc = {
        "entrypoint": [inp.recipe.image_binary_path, *inp.recipe.args],
        "env": {"HOME": "/", "PATH": "/bin:/usr/bin", **inp.recipe.env},
        "workdir": inp.recipe.workdir,
        "modules": [str(m.image_path) for m in inp.modules],
        # On a read-only root, the directories an app writes in get a tmpfs each.
        "tmpfs": [d.path for d in rec.dirs] if inp.root == EROFS else [],
    }
    arc.add_file("/uniklab/image.json", json.dumps(image_doc, indent=1).encode())
    files = 2 + len(inp.libs) + len(inp.modules) + len(rec.files) + (rec.page is not None)
    return arc, files


def _check_writable(rec: Recipe) -> None:
    """A file baked below a directory that becomes a tmpfs would be hidden at boot."""
    for f in rec.files:
        for d in rec.dirs:
            if PurePosixPath(f.dest).is_relative_to(d.path):
                raise BakeError(
                    f"{rec.name}: file {f.dest} is inside {d.path}, which is a writable tmpfs on "
                    "a read-only root: bake with --root initramfs, or move the file"
                )


def _write_root(inp: _Inputs, staging: Path) -> tuple[str, int, int]:
    """Write the root file into ``staging``: (its name, its size, the image's file count)."""
    arc, files = _archive(inp)
    if inp.root == EROFS:
        comp: erofs.ErofsCompression = "none" if inp.compression == "none" else "lz4hc"
        return "root.erofs", erofs.make_erofs(arc, staging / "root.erofs", comp), files
    initrd = cpio.compress(arc.to_bytes(), inp.compression)  # type: ignore[arg-type]
    (staging / "initrd").write_bytes(initrd)
    return "initrd", len(initrd), files


def bake(
    recipe: Recipe,
    *,
    recipe_dir: Path | None,
    store: ImageStore,
    cache: Path,
    tag: str = "latest",
    compression: str | None = None,
    kernel: str = HOST,
    root: str | None = None,
    progress: Progress | None = None,
) -> BakeResult:
    """Bake ``recipe`` into the store; reuse the stored image when the inputs are the same.

    ``kernel`` is ``host``, ``specialised[:PROFILE]`` or a kernel file (see
    ``uniklab.bake.kernel_choice.choose_kernel``); ``root`` is ``initramfs`` or ``erofs`` (by
    default erofs when the kernel can mount it, see ``_choose_root``).
    """
    say = progress or buildcache.quiet
    start = time.monotonic()
    if recipe.kind == "rumprun":
        if kernel != HOST or root is not None:
            raise UsageError(f"{recipe.name} is a rumprun unikernel: it has no --kernel or --root")
        m, cached = rumprun.bake(
            recipe, store=store, recipe_dir=recipe_dir, tag=tag, progress=say
        )
        return BakeResult(m, cached, time.monotonic() - start)
    say("resolving inputs")
    if root is not None and root not in ROOTS:
        raise UsageError(f"invalid root {root!r}: use {' or '.join(ROOTS)}")
    inp = _resolve(recipe, recipe_dir, cache, kernel, say)
    root_kind = _choose_root(root, inp.kernel)
    if root_kind == EROFS:
        _check_writable(recipe)
    comp = _choose_compression(compression, root_kind, inp.kernel)
    inp = dataclasses.replace(inp, root=root_kind, compression=comp)
    digest = inp.digest()
    if store.has(digest):
        m = store.manifest(digest)
        if (m.name, m.tag) != (recipe.name, tag):
            m = m.model_copy(update={"name": recipe.name, "tag": tag})
        return BakeResult(m, True, time.monotonic() - start)

    say(f"writing the {inp.root} root")
    staging = store.staging()
    try:
        root_file, root_size, files = _write_root(inp, staging)
        faults.point("bake.after_initrd")
        kernel_bytes = inp.kernel.path.read_bytes()
        (staging / "kernel").write_bytes(kernel_bytes)
        manifest = Manifest(
            name=recipe.name,
            tag=tag,
            digest=digest,
            created=time.time(),
            kernel=KernelInfo(
                release=inp.kernel.release, source=str(inp.kernel.path), choice=inp.kernel.label
            ),
            kind=f"linux-{inp.root}",
            platforms=["qemu"] if inp.root == EROFS else inp.kernel.platforms,
            initrd=root_file,
            compression=inp.compression,
            size=root_size + len(kernel_bytes),
            kernel_size=len(kernel_bytes),
            initrd_size=root_size,
            cmdline=_cmdline(inp.kernel, inp.root),
            acpi=inp.kernel.acpi,
            entrypoint=[recipe.image_binary_path, *recipe.args],
            ports=recipe.ports,
            probe=recipe.probe,
            memory=recipe.memory,
            files=files,
            bake_seconds=round(time.monotonic() - start, 3),
        )
        store.commit(staging, manifest)
    except OSError as exc:  # a full disk, a quota: the half image goes, one line says why
        shutil.rmtree(staging, ignore_errors=True)
        raise BakeError(f"cannot write image {recipe.name} in {store.root}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("baked %s:%s %s in %.2fs", recipe.name, tag, digest[:19], manifest.bake_seconds)
    return BakeResult(manifest, False, time.monotonic() - start)
