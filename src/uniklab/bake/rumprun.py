"""Baking a rumprun unikernel: the app is built by its rumprun-packages package, as that
package's README says, and ``rumprun-bake`` links it with the rump kernel.

For each target (``hw_virtio`` for QEMU, ``xen_pv`` for Xen) the toolchain of its platform
is taken from the machine-wide cache (built first if missing: minutes, see
``uniklab.toolchain.rumprun``); the pinned rumprun-packages tree is unpacked, given a
``config.mk`` naming the toolchain and the pinned tarballs its Makefile would download,
and its ``make`` runs, niced, with a log.  The image holds one kernel per backend
(debug sections stripped: the 21 MB ``-g`` build is 3.8 MB without them) and the
package's data disks (Redis's ``data.iso`` with its ``conf/redis.conf``).  The digest
covers every input, so baking again is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from uniklab import buildcache
from uniklab.bake import source as debian
from uniklab.bake.image import ImageDisk, ImageStore, KernelInfo, Manifest
from uniklab.bake.recipe import ProbeSpec, Recipe, RumprunSpec, builtin_dir
from uniklab.buildcache import Progress
from uniklab.digest import sha256_known
from uniklab.errors import BakeError, CommandError
from uniklab.executor import local
from uniklab.guest import console as guest_console
from uniklab.toolchain import rumprun as rr
from uniklab.toolchain import sources

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the image layout changes
BUILD_TIMEOUT = 30 * 60.0
# rumprun-bake's target -> the toolchain platform and the backend that boots it.
TARGETS = {"hw_virtio": ("hw", "qemu"), "xen_pv": ("xen", "xen")}


def bake(
    recipe: Recipe,
    *,
    store: ImageStore,
    recipe_dir: Path | None = None,
    tag: str = "latest",
    source: Path | None = None,
    fetch: bool = True,
    progress: Progress | None = None,
) -> tuple[Manifest, bool]:
    """Bake a ``kind = "rumprun"`` recipe into the store; (manifest, whether it was cached).

    ``source`` is where the pinned sources are (as for ``uniklab toolchain build``)."""
    say = progress or buildcache.quiet
    spec = recipe.rumprun
    assert spec is not None
    start = time.monotonic()
    toolchains: dict[str, rr.Toolchain] = {}
    for target in spec.targets:
        platform = TARGETS[target][0]
        say(f"the rumprun {platform} toolchain")
        toolchains[target] = rr.build(platform, source=source, fetch=fetch, progress=say)
    inputs = _inputs(spec, recipe_dir, source, say)
    digest = _digest(recipe, toolchains, inputs)
    if store.has(digest):
        m = store.manifest(digest)
        return m.model_copy(update={"name": recipe.name, "tag": tag}), True

    root = buildcache.root("builds", "UNIKLAB_BUILD_CACHE")
    work = buildcache.staging(root)
    staging = store.staging()
    try:
        kernels: dict[str, str] = {}
        disks: list[ImageDisk] = []
        for built, tc in toolchains.items():
            if spec.package is not None:
                pkg = _build_package(spec, spec.package, tc, inputs, work / built, say)
            else:
                pkg = _build_debian(spec, tc, inputs, work / built, say)
            backend = TARGETS[built][1]
            say(f"rumprun-bake {built}")
            baked = work / f"{built}.bin"
            _run(
                tc,
                [str(tc.bake), built, str(baked), str(pkg / spec.binary)],
                cwd=pkg,
                what=f"rumprun-bake {built}",
            )
            kernels[backend] = f"kernel-{backend}"
            _run(
                tc,
                ["strip", "--strip-debug", "-o", str(staging / kernels[backend]), str(baked)],
                cwd=pkg,
                what="strip",
            )
            if not disks:
                disks = [_copy_disk(pkg, d.src, d.mount, staging) for d in spec.disks]
        manifest = rumprun_manifest(
            staging,
            name=recipe.name,
            tag=tag,
            digest=digest,
            kernels=kernels,
            release=f"rumprun {sources.RUMPRUN.commit}",
            source=", ".join(tc.name for tc in toolchains.values()),
            disks=disks,
            entrypoint=[Path(spec.binary).name, *recipe.args],
            ports=recipe.ports,
            probe=_probe(recipe.probe),
            memory=recipe.memory,
            seconds=time.monotonic() - start,
        )
        store.commit(staging, manifest)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BakeError(f"cannot write image {recipe.name} in {store.root}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("baked %s:%s %s in %.2fs", recipe.name, tag, digest[:19], manifest.bake_seconds)
    return manifest, False


def rumprun_manifest(
    staging: Path,
    *,
    name: str,
    tag: str,
    digest: str,
    kernels: dict[str, str],
    release: str,
    source: str,
    disks: list[ImageDisk],
    entrypoint: list[str],
    ports: list[int],
    probe: ProbeSpec,
    memory: str,
    seconds: float,
) -> Manifest:
    """The manifest of a rumprun image whose files are in ``staging`` (baked or imported):
    a kernel per backend (``kernels``), data disks, no Linux root or command line."""
    first = next(iter(kernels.values()))
    kernel_size = (staging / first).stat().st_size
    disk_size = sum(d.size for d in disks)
    return Manifest(
        name=name,
        tag=tag,
        digest=digest,
        kind="rumprun",
        platforms=list(kernels),
        created=time.time(),
        kernel=KernelInfo(release=release, source=source, file=first, choice="rumprun"),
        kernels=kernels,
        disks=disks,
        initrd="",
        compression="none",
        size=kernel_size + disk_size,
        kernel_size=kernel_size,
        initrd_size=disk_size,
        cmdline="",
        acpi=False,
        entrypoint=entrypoint,
        ports=ports,
        probe=probe,
        memory=memory,
        files=len(disks),
        bake_seconds=round(seconds, 3),
    )


def _pin(name: str) -> sources.Pin:
    for pin in sources.PINS:
        if pin.name == name:
            return pin
    known = ", ".join(p.name for p in sources.PINS if p is not sources.RUMPRUN)
    raise BakeError(f"downloads: no pinned source named {name!r} (known: {known})")


def _probe(probe: ProbeSpec) -> ProbeSpec:
    """A console probe without a marker waits for rumprun to call the app's main()."""
    if probe.kind == "console" and probe.marker is None:
        return probe.model_copy(update={"marker": guest_console.RUMPRUN_CALLING_RE.pattern})
    return probe


def _inputs(
    spec: RumprunSpec, recipe_dir: Path | None, source: Path | None, say: Progress
) -> dict[str, Path]:
    """The files the build reads, by name: rumprun-packages and the pinned downloads
    (verified tarballs), or the Debian source's .dsc (fetched once per machine) and the
    shims."""
    if spec.package is not None:
        pins = [sources.RUMPRUN_PACKAGES, *(_pin(name) for name in spec.downloads)]
        return {pin.name: sources.tarball(pin, source) for pin in pins}
    assert spec.debian_source is not None
    found = {"dsc": debian.fetch(spec.debian_source, debian.cache_root(), say)}
    for shim in spec.shims:
        found[f"shim:{shim}"] = _recipe_file(recipe_dir, shim)
    return found


def _recipe_file(recipe_dir: Path | None, rel: str) -> Path:
    base = (recipe_dir or builtin_dir()).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise BakeError(f"recipe file {rel!r} not found in {base}")
    return path


def _digest(recipe: Recipe, toolchains: dict[str, rr.Toolchain], inputs: dict[str, Path]) -> str:
    doc = {
        "format": FORMAT,
        "recipe": recipe.model_dump(mode="json"),
        "toolchains": {t: tc.key for t, tc in toolchains.items()},
        "inputs": {name: sha256_known(path) for name, path in sorted(inputs.items())},
    }
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _build_package(
    spec: RumprunSpec,
    package: str,
    tc: rr.Toolchain,
    tarballs: dict[str, Path],
    work: Path,
    say: Progress,
) -> Path:
    """Unpack rumprun-packages, give it the toolchain and the pinned downloads, run make."""
    work.mkdir(parents=True)
    try:
        local.run(["tar", "-xf", tarballs["rumprun-packages"], "-C", work], timeout=300)
    except CommandError as exc:
        raise BakeError(f"unpacking rumprun-packages failed: {exc}") from exc
    tree = work / sources.RUMPRUN_PACKAGES.top
    pkg = tree / package
    if not (pkg / "Makefile").is_file():
        raise BakeError(f"rumprun-packages has no package {package!r} (no Makefile)")
    (tree / "config.mk").write_text(f"RUMPRUN_TOOLCHAIN_TUPLE={rr.TUPLE}\n")
    (pkg / "dl").mkdir(exist_ok=True)
    for name in spec.downloads:
        src = tarballs[name]
        shutil.copy2(src, pkg / "dl" / src.name)
    jobs = os.cpu_count() or 1
    _make(tc, ["make", f"-j{jobs}", *spec.make], package, pkg, say)
    if not (pkg / spec.binary).is_file():
        raise BakeError(f"make in rumprun-packages/{package} left no {spec.binary}")
    return pkg


def _build_debian(
    spec: RumprunSpec, tc: rr.Toolchain, inputs: dict[str, Path], work: Path, say: Progress
) -> Path:
    """Unpack the Debian source with its patches (less ``drop_patches``), compile the
    shims with the toolchain, run the build command."""
    assert spec.debian_source is not None
    work.mkdir(parents=True)
    src = work / "src"
    say(f"unpacking {inputs['dsc'].name} with Debian's patches")
    try:
        local.run(["dpkg-source", "-x", inputs["dsc"], src], timeout=600, cwd=work)
        for patch in spec.drop_patches:
            local.run(["patch", "-R", "-p1", "-i", src / "debian/patches" / patch], cwd=src)
    except CommandError as exc:
        raise BakeError(f"preparing {spec.debian_source}: {exc}") from exc
    objects = []
    for i, shim in enumerate(spec.shims):
        obj = src / f"uniklab-shim-{i}.o"
        argv = [str(tc.cc), "-O2", "-c", "-o", str(obj), str(inputs[f"shim:{shim}"])]
        _run(tc, argv, cwd=src, what=f"compiling {shim}")
        objects.append(str(obj))
    jobs = str(os.cpu_count() or 1)
    argv = [a.replace("{jobs}", jobs).replace("{shims}", " ".join(objects)) for a in spec.command]
    _make(tc, argv, spec.debian_source, src, say)
    if not (src / spec.binary).is_file():
        raise BakeError(f"the build of {spec.debian_source} left no {spec.binary}")
    return src


def _make(tc: rr.Toolchain, argv: list[str], what: str, cwd: Path, say: Progress) -> None:
    """A package's build with the toolchain first on PATH, niced, its log kept; its lines
    of output are the units (the last build's count of the package is the estimate)."""
    log_path = _log_path(what, tc.platform)
    step = f"building {what} for rumprun {tc.platform} (log: {log_path})"
    root = buildcache.root("builds", "UNIKLAB_BUILD_CACHE")
    units = f"rumprun-{tc.platform}-{what}"
    progress = buildcache.Counter(
        say, step, buildcache.any_line, buildcache.expected_units(root, units)
    )
    buildcache.run_logged(
        ["nice", "-n", "19", "env", f"PATH={tc.env()['PATH']}", *argv],
        what=step,
        log_path=log_path,
        deadline=time.monotonic() + BUILD_TIMEOUT,
        cwd=cwd,
        on_output=progress,
    )
    buildcache.record_units(root, units, progress.done)


def _log_path(package: str, platform: str) -> Path:
    """Where a package build's log is kept (the last one of each package and platform)."""
    folder = buildcache.root("builds", "UNIKLAB_BUILD_CACHE") / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"rumprun-{platform}-{package}.log"


def _run(tc: rr.Toolchain, argv: list[str], *, cwd: Path, what: str) -> None:
    try:
        local.run(argv, timeout=600, cwd=cwd, env=tc.env())
    except CommandError as exc:
        raise BakeError(f"{what} failed: {exc}") from exc


def _copy_disk(pkg: Path, src: str, mount: str, staging: Path) -> ImageDisk:
    path = pkg / src
    if not path.is_file():
        raise BakeError(f"the package's build left no disk {src}")
    name = f"disk-{Path(src).name}"
    shutil.copy2(path, staging / name)
    return ImageDisk(file=name, mount=mount, size=path.stat().st_size)
