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
from uniklab.bake.image import ImageDisk, ImageStore, KernelInfo, Manifest
from uniklab.bake.recipe import ProbeSpec, Recipe, RumprunSpec
from uniklab.buildcache import Progress
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
    tag: str = "latest",
    source: Path | None = None,
    fetch: bool = True,
    progress: Progress | None = None,
) -> tuple[Manifest, bool]:
    """Bake a ``kind = "rumprun"`` recipe into the store; (manifest, whether it was cached).

    ``source`` is where the pinned sources are (as for ``uniklab toolchain build``)."""
    say = progress or (lambda _msg: None)
    spec = recipe.rumprun
    assert spec is not None
    start = time.monotonic()
    toolchains: dict[str, rr.Toolchain] = {}
    for target in spec.targets:
        platform = TARGETS[target][0]
        say(f"the rumprun {platform} toolchain")
        toolchains[target] = rr.build(platform, source=source, fetch=fetch, progress=say)
    pins = [sources.RUMPRUN_PACKAGES, *(_pin(name) for name in spec.downloads)]
    tarballs = {pin.name: sources.tarball(pin, source) for pin in pins}
    digest = _digest(recipe, toolchains, tarballs)
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
            pkg = _build_package(spec, tc, tarballs, work / built, say)
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


def _digest(recipe: Recipe, toolchains: dict[str, rr.Toolchain], tarballs: dict[str, Path]) -> str:
    doc = {
        "format": FORMAT,
        "recipe": recipe.model_dump(mode="json"),
        "toolchains": {t: tc.key for t, tc in toolchains.items()},
        # a verified tarball's content is its pin's
        "sources": {name: path.name for name, path in sorted(tarballs.items())},
        "pins": {p.name: p.sha256 for p in sources.PINS if p.name in tarballs},
    }
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _build_package(
    spec: RumprunSpec, tc: rr.Toolchain, tarballs: dict[str, Path], work: Path, say: Progress
) -> Path:
    """Unpack rumprun-packages, give it the toolchain and the pinned downloads, run make."""
    work.mkdir(parents=True)
    try:
        local.run(["tar", "-xf", tarballs["rumprun-packages"], "-C", work], timeout=300)
    except CommandError as exc:
        raise BakeError(f"unpacking rumprun-packages failed: {exc}") from exc
    tree = work / sources.RUMPRUN_PACKAGES.top
    pkg = tree / spec.package
    if not (pkg / "Makefile").is_file():
        raise BakeError(f"rumprun-packages has no package {spec.package!r} (no Makefile)")
    (tree / "config.mk").write_text(f"RUMPRUN_TOOLCHAIN_TUPLE={rr.TUPLE}\n")
    (pkg / "dl").mkdir(exist_ok=True)
    for name in spec.downloads:
        src = tarballs[name]
        shutil.copy2(src, pkg / "dl" / src.name)
    log_path = _log_path(spec.package, tc.platform)
    say(f"make {' '.join(spec.make)} in rumprun-packages/{spec.package} (log: {log_path})")
    jobs = os.cpu_count() or 1
    argv = ["nice", "-n", "19", "env", f"PATH={tc.env()['PATH']}", "make", f"-j{jobs}"]
    buildcache.run_logged(
        [*argv, *spec.make],
        what=f"building {spec.package} for rumprun {tc.platform} (log: {log_path})",
        log_path=log_path,
        deadline=time.monotonic() + BUILD_TIMEOUT,
        cwd=pkg,
    )
    if not (pkg / spec.binary).is_file():
        raise BakeError(f"make in rumprun-packages/{spec.package} left no {spec.binary}")
    return pkg


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
