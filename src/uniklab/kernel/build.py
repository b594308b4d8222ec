"""Build a specialised kernel once per machine, and find it again.

The source is Debian's ``linux-source-6.1`` tarball; the config is ``make tinyconfig``
with the profile's fragments merged over it, then ``make olddefconfig``, then a check that
every fragment option survived.  Everything is built in (no modules).  The result lives in
a machine-wide cache (``user_cache_dir("uniklab")/kernels/<key>/``, not under
UNIKLAB_HOME, so every lab and test session on the machine shares it), keyed by the source
version, the compiler and the fragments.  A lock file serialises builders of one key; the
build runs in a temporary directory that is renamed into place, so a half-built kernel is
never seen.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from uniklab import buildcache
from uniklab.buildcache import Progress
from uniklab.errors import BakeError, CommandError
from uniklab.executor import Executor, local
from uniklab.kernel import config as kconfig

log = logging.getLogger(__name__)

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
BUILD_TIMEOUT = 30 * 60.0
ARCH = "x86_64"
# Reproducible strings in the image (uname -v), whoever builds it.
KBUILD_ENV = (
    "KBUILD_BUILD_USER=uniklab",
    "KBUILD_BUILD_HOST=uniklab",
    "KBUILD_BUILD_TIMESTAMP=2023-01-01",
)
BZIMAGE = "bzImage"
CONFIG = "config"
RELEASE = "release"


@dataclass(frozen=True)
class BuiltKernel:
    """A finished cache entry: the kernel, its final .config and its release string."""

    profile: str
    key: str
    dir: Path

    @property
    def bzimage(self) -> Path:
        return self.dir / BZIMAGE

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def release(self) -> str:
        return (self.dir / RELEASE).read_text().strip()

    def has(self, symbol: str) -> bool:
        return kconfig.has_option(self.config_path.read_text(), symbol)


def cache_root() -> Path:
    return buildcache.root("kernels", "UNIKLAB_KERNEL_CACHE")


def source_version(executor: Executor = local, tarball: Path = SOURCE_TARBALL) -> str:
    """The source package's version, or the tarball's size and mtime outside dpkg."""
    if not tarball.is_file():
        raise BakeError(
            f"kernel source {tarball} not found (apt-get install {SOURCE_PACKAGE} "
            "bc bison flex libelf-dev libssl-dev build-essential)"
        )
    try:
        res = executor.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE], timeout=30, check=True
        )
        if res.stdout.strip():
            return f"{SOURCE_PACKAGE} {res.stdout.strip()}"
    except CommandError as exc:
        log.debug("dpkg-query: %s", exc)
    st = tarball.stat()
    return f"{tarball.name} {st.st_size} {int(st.st_mtime)}"


def gcc_version(executor: Executor = local) -> str:
    try:
        res = executor.run(["gcc", "--version"], timeout=30)
    except CommandError as exc:
        raise BakeError("gcc not found (apt-get install build-essential)") from exc
    return res.stdout.splitlines()[0].strip() if res.stdout else "unknown"


def plan(profile: str, executor: Executor = local) -> tuple[str, list[kconfig.Fragment]]:
    """The cache key of ``profile`` on this machine, and its fragments."""
    fragments = kconfig.profile_fragments(profile)
    key = kconfig.cache_key(
        source_version=source_version(executor),
        gcc_version=gcc_version(executor),
        fragments=fragments,
    )
    return key, fragments


def cached(
    profile: str, *, root: Path | None = None, executor: Executor = local
) -> BuiltKernel | None:
    key, _ = plan(profile, executor)
    entry = BuiltKernel(profile, key, (root or cache_root()) / key)
    return entry if entry.bzimage.is_file() else None


def build(
    profile: str = kconfig.DEFAULT_PROFILE,
    *,
    jobs: int | None = None,
    timeout: float = BUILD_TIMEOUT,
    root: Path | None = None,
    progress: Progress | None = None,
    executor: Executor = local,
) -> BuiltKernel:
    """The kernel of ``profile``, built now unless this machine already has it."""
    say = progress or buildcache.quiet
    root = root or cache_root()
    key, fragments = plan(profile, executor)
    entry = BuiltKernel(profile, key, root / key)
    if entry.bzimage.is_file():
        return entry
    with buildcache.locked(root / f"{key}.lock", say, "the same kernel"):
        if entry.bzimage.is_file():  # another process built it while we waited
            return entry
        work = buildcache.staging(root)
        what = f"kernel-{profile}"  # its objects: the next build's estimate
        try:
            expected = buildcache.expected_units(root, what)
            jobs = jobs or os.cpu_count() or 1
            out, compiled = _build_in(work, fragments, jobs, timeout, say, executor, expected)
            os.rename(out, entry.dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        buildcache.record_units(root, what, compiled)
    log.info("kernel %s (%s) built: %s", profile, key, entry.bzimage)
    return entry


def _build_in(
    work: Path,
    fragments: list[kconfig.Fragment],
    jobs: int,
    timeout: float,
    say: Progress,
    executor: Executor,
    expected: int | None = None,
) -> tuple[Path, int]:
    """The kernel built in ``work`` (its out directory) and how many objects it compiled."""
    deadline = time.monotonic() + timeout
    say(f"unpacking {SOURCE_TARBALL.name}")
    executor.run(["tar", "-xf", SOURCE_TARBALL, "-C", work], timeout=600)
    trees = [p for p in work.iterdir() if (p / "Makefile").is_file()]
    if len(trees) != 1:
        raise BakeError(f"{SOURCE_TARBALL}: expected one kernel tree, found {len(trees)}")
    src = trees[0]
    make: list[str | Path] = ["make", "-C", src, f"ARCH={ARCH}"]
    say("configuring (tinyconfig + fragments)")
    executor.run([*make, "tinyconfig"], timeout=300)
    dot = src / ".config"
    dot.write_text(kconfig.merge(dot.read_text(), fragments))
    executor.run([*make, "olddefconfig"], timeout=300)
    final = dot.read_text()
    lost = kconfig.dropped(final, fragments)
    if lost:
        raise BakeError(
            "kernel config: fragment options dropped by Kconfig (unmet dependencies?): "
            + ", ".join(lost)
        )
    compiled = _make_bzimage(src, jobs, deadline, work / "build.log", say, expected)
    out = work / "out"
    out.mkdir()
    shutil.copy2(src / "arch" / "x86" / "boot" / BZIMAGE, out / BZIMAGE)
    (out / CONFIG).write_text(final)
    (out / RELEASE).write_text((src / "include" / "config" / "kernel.release").read_text())
    shutil.copy2(work / "build.log", out / "build.log")
    return out, compiled


def compiled_object(line: str) -> str | None:
    """The object a line of kbuild's output compiles (``  CC      kernel/fork.o``), if any."""
    words = line.split()
    return words[-1] if len(words) >= 2 and words[0] == "CC" else None


def _make_bzimage(
    src: Path, jobs: int, deadline: float, log_path: Path, say: Progress, expected: int | None
) -> int:
    """make bzImage; how many objects it compiled (``expected``: the last build's count)."""
    argv = ["env", *KBUILD_ENV, "make", "-C", str(src), f"ARCH={ARCH}", f"-j{jobs}", BZIMAGE]
    progress = buildcache.Counter(say, f"compiling (make -j{jobs})", compiled_object, expected)
    buildcache.run_logged(
        argv,
        what="kernel build",
        log_path=log_path,
        deadline=deadline,
        on_output=progress,
        tail=15,
    )
    return progress.done
