"""Build the rumprun toolchain (``hw`` or ``xen``) once per machine, and find it again.

The pinned sources (``sources``) get the project's own patches (``patches/``), then
rumprun's ``build-rr.sh`` runs with the flags a modern GCC needs, niced, its output in a
log.  The result is a toolchain prefix (``rumprun/bin/x86_64-rumprun-netbsd-gcc``,
``rumprun-bake``, the ``rumprun`` launcher) in the machine-wide cache
(``user_cache_dir("uniklab")/toolchains/rumprun-<platform>-<key>/``), keyed by the source
digest, the patches, the platform, the build flags and the host compiler.  The prefix holds
absolute paths to itself (rumprun-bake, the gcc specs), so unlike the kernel cache it is
built in place, not renamed into place: an entry counts only once its ``toolchain.json``
is written, and a lock per key serialises builders.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from uniklab import buildcache
from uniklab.buildcache import Progress
from uniklab.errors import BakeError, CommandError, UsageError
from uniklab.executor import Executor, local
from uniklab.kernel.build import gcc_version
from uniklab.toolchain import sources
from uniklab.toolchain.sources import RumprunSource

log = logging.getLogger(__name__)

PLATFORMS = ("hw", "xen")
TUPLE = "x86_64-rumprun-netbsd"
BUILD_TIMEOUT = 90 * 60.0
UNPACK_TIMEOUT = 600.0
META = "toolchain.json"
PREFIX = "rumprun"
# Bumped when the way a toolchain is built changes in a way the key does not see.
RECIPE_VERSION = 1

# GCC >= 10 defaults to -fno-common: the host tools (nbmake) then fail to link with
# "multiple definition of 'debug_file'".
HOST_CFLAGS = "-O -fcommon"
# After '--', for buildrump.sh: the same for the target code.  GCC 12 warns ~950 times
# where NetBSD says -Werror (first stop: -Werror=cast-function-type in sys/conf.h);
# NOGCCERROR or CWARNFLAGS=-Wno-error each gets past that alone, both are passed.
# -Wno-error goes in CWARNFLAGS, never in CFLAGS: buildrump.sh's feature probes put
# CFLAGS after their -Werror, and would then pass for code that does not compile cleanly.
BUILDRUMP_FLAGS = ("-F", "CFLAGS=-fcommon", "-V", "NOGCCERROR=1", "-F", "CWARNFLAGS=-Wno-error")
XEN_HEADER = Path("/usr/include/xen/xen.h")


@dataclass(frozen=True)
class Patch:
    """One of the project's patches to the pinned rumprun tree (``patch -p1`` at its top)."""

    name: str
    platforms: tuple[str, ...]

    def text(self) -> str:
        res = importlib.resources.files("uniklab.toolchain") / "patches" / self.name
        return res.read_text()

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()


PATCHES = (
    Patch("netbsd-setjmp-stack-alignment.patch", ("hw", "xen")),
    Patch("xen-header-probe-idirafter.patch", ("xen",)),
    Patch("xen-minios-no-werror-fcommon.patch", ("xen",)),
    Patch("xen-minios-xenbus-first-reply.patch", ("xen",)),
    Patch("xen-minios-callback-stack-alignment.patch", ("xen",)),
    Patch("hw-halt-exits-qemu.patch", ("hw",)),
)


def patches_for(platform: str) -> list[Patch]:
    return [p for p in PATCHES if platform in p.platforms]


@dataclass(frozen=True)
class Toolchain:
    """One cache entry: the toolchain prefix of a platform, and what it was built from."""

    platform: str
    key: str
    dir: Path
    built_now: bool = field(default=False, compare=False)

    @property
    def name(self) -> str:
        return entry_name(self.platform, self.key)

    @property
    def prefix(self) -> Path:
        return self.dir / PREFIX

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"

    @property
    def cc(self) -> Path:
        return self.bin / f"{TUPLE}-gcc"

    @property
    def bake(self) -> Path:
        return self.bin / "rumprun-bake"

    @property
    def launcher(self) -> Path:
        return self.bin / "rumprun"

    @property
    def meta_path(self) -> Path:
        return self.dir / META

    @property
    def log_path(self) -> Path:
        return self.dir / "build.log"

    @property
    def complete(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.meta_path.read_text())
        return doc

    def env(self) -> dict[str, str]:
        """The environment to run the toolchain's commands in (its bin/ first on PATH)."""
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}


def entry_name(platform: str, key: str) -> str:
    return f"rumprun-{platform}-{key}"


def cache_root() -> Path:
    return buildcache.root("toolchains", "UNIKLAB_TOOLCHAIN_CACHE")


def compiler_version(executor: Executor = local) -> str:
    """The host gcc and ld (the rumprun toolchain wraps both)."""
    try:
        ld = executor.run(["ld", "--version"], timeout=30).stdout.splitlines()
    except CommandError as exc:
        raise BakeError("ld not found (apt-get install build-essential)") from exc
    return f"{gcc_version(executor)}; {ld[0].strip() if ld else 'ld unknown'}"


def cache_key(*, source_digest: str, platform: str, compiler: str, patches: list[Patch]) -> str:
    doc = {
        "recipe": RECIPE_VERSION,
        "source": source_digest,
        "platform": platform,
        "compiler": compiler,
        "patches": {p.name: p.digest() for p in patches},
        "flags": [HOST_CFLAGS, *BUILDRUMP_FLAGS],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def build_argv(platform: str, *, jobs: int, prefix: Path, objdir: Path) -> list[str]:
    """build-rr.sh's command line (run at the tree's top), niced: other work shares the
    machine."""
    return [
        "nice", "-n", "19",
        "env", f"HOST_CFLAGS={HOST_CFLAGS}",
        "./build-rr.sh", f"-j{jobs}", "-d", str(prefix), "-o", str(objdir),
        platform, "--", *BUILDRUMP_FLAGS,
    ]  # fmt: skip


def installed(root: Path | None = None) -> list[Toolchain]:
    """The finished entries of the cache, newest first."""
    root = root or cache_root()
    found = []
    for meta in root.glob(f"rumprun-*/{META}"):
        try:
            doc = json.loads(meta.read_text())
            found.append(Toolchain(str(doc["platform"]), str(doc["key"]), meta.parent))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring %s: %s", meta, exc)
    return sorted(found, key=lambda t: t.meta_path.stat().st_mtime, reverse=True)


def latest(platform: str, root: Path | None = None) -> Toolchain | None:
    """The newest finished toolchain of ``platform``, whatever its key: for users of a
    toolchain that need not know which sources built it (``cached`` checks the key)."""
    return next((t for t in installed(root) if t.platform == platform), None)


def plan(
    platform: str,
    *,
    source: Path | None = None,
    fetch: bool = True,
    root: Path | None = None,
    progress: Progress | None = None,
    executor: Executor = local,
) -> tuple[Toolchain, RumprunSource]:
    """The cache entry ``platform`` would have on this machine (built or not), and where its
    sources come from."""
    if platform not in PLATFORMS:
        raise UsageError(f"unknown rumprun platform {platform!r} (one of: {', '.join(PLATFORMS)})")
    root = root or cache_root()
    src = sources.resolve_rumprun(source, fetch=fetch, cache=root, progress=progress)
    key = cache_key(
        source_digest=src.digest,
        platform=platform,
        compiler=compiler_version(executor),
        patches=patches_for(platform),
    )
    return Toolchain(platform, key, root / entry_name(platform, key)), src


def cached(
    platform: str, *, source: Path | None = None, root: Path | None = None
) -> Toolchain | None:
    """The toolchain of ``platform`` for these sources and this compiler, if built."""
    entry, _ = plan(platform, source=source, fetch=False, root=root)
    return entry if entry.complete else None


def build(
    platform: str = "hw",
    *,
    source: Path | None = None,
    fetch: bool = True,
    jobs: int | None = None,
    timeout: float = BUILD_TIMEOUT,
    root: Path | None = None,
    progress: Progress | None = None,
    executor: Executor = local,
) -> Toolchain:
    """The rumprun toolchain of ``platform``, built now unless this machine has it."""
    say = progress or buildcache.quiet
    root = root or cache_root()
    entry, src = plan(
        platform, source=source, fetch=fetch, root=root, progress=say, executor=executor
    )
    if entry.complete:
        return entry
    check_prerequisites(platform)
    with buildcache.locked(root / f"{entry.name}.lock", say, f"the rumprun {platform} toolchain"):
        if entry.complete:  # another process built it while we waited
            return entry
        shutil.rmtree(entry.dir, ignore_errors=True)  # what a killed build left
        log_path = root / "logs" / f"{entry.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        work = buildcache.staging(root)
        start = time.monotonic()
        units = f"toolchain-rumprun-{platform}"  # its objects: the next build's estimate
        try:
            tree = unpack(src, work, say, executor)
            ensure_git_head(tree, executor)
            apply_patches(tree, patches_for(platform), executor)
            expected = buildcache.expected_units(root, units)
            compiled = _run_build_rr(
                entry, tree, work / "obj", jobs, start + timeout, log_path, say, expected
            )
            missing = [p.name for p in (entry.cc, entry.bake, entry.launcher) if not p.is_file()]
            if missing:
                raise BakeError(
                    f"rumprun {platform} build made no {', '.join(missing)} (log: {log_path})"
                )
            shutil.copy2(log_path, entry.log_path)
            _write_meta(entry, src, time.monotonic() - start, executor)
        except BaseException:
            shutil.rmtree(entry.dir, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log_path.unlink(missing_ok=True)
        buildcache.record_units(root, units, compiled)
    log.info("rumprun %s toolchain (%s) built: %s", platform, entry.key, entry.prefix)
    return Toolchain(entry.platform, entry.key, entry.dir, built_now=True)


def remove(entry: Toolchain, root: Path | None = None) -> None:
    """Remove a finished entry (not one being built: its lock is held)."""
    lock = (root or entry.dir.parent) / f"{entry.name}.lock"
    with buildcache.locked(lock, buildcache.quiet, entry.name):
        shutil.rmtree(entry.dir)


def check_prerequisites(platform: str) -> None:
    if platform == "xen" and not XEN_HEADER.is_file():
        raise BakeError(
            f"the xen toolchain needs the Xen headers ({XEN_HEADER}): apt-get install libxen-dev"
        )


def unpack(src: RumprunSource, work: Path, say: Progress, executor: Executor = local) -> Path:
    """A writable copy of the rumprun tree in ``work`` (the build writes into it)."""
    tree = work / sources.RUMPRUN.top
    if src.kind == "tarball":
        say(f"unpacking {src.path.name}")
        executor.run(["tar", "-xf", src.path, "-C", work], timeout=UNPACK_TIMEOUT)
    else:
        say(f"copying {src.path}")
        executor.run(["cp", "-a", src.path, tree], timeout=UNPACK_TIMEOUT)
    if not sources.is_rumprun_tree(tree):
        raise BakeError(f"{src.describe()}: no rumprun tree ({sources.RUMPRUN.top}/build-rr.sh)")
    return tree


def ensure_git_head(tree: Path, executor: Executor = local) -> None:
    """build-rr.sh asks ``git rev-parse --abbrev-ref HEAD`` under ``set -eu``: outside a git
    checkout (a tarball) that stops it, so the tree becomes a repository with one (empty)
    commit on master (any other branch name would only rename its default directories)."""
    probe = executor.run(
        ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=tree, check=False, timeout=60
    )
    if probe.returncode == 0 and (tree / ".git").exists():
        return
    ident = ["-c", "user.name=uniklab", "-c", "user.email=uniklab@localhost"]
    executor.run(["git", "init", "-q", "-b", "master"], cwd=tree, timeout=60)
    executor.run(
        ["git", *ident, "commit", "-q", "--allow-empty", "--no-verify", "-m", "unpacked"],
        cwd=tree,
        timeout=60,
    )


def apply_patches(tree: Path, patches: list[Patch], executor: Executor = local) -> None:
    """Apply ``patches`` in order; each is first tried (--dry-run) so a failing one
    changes nothing."""
    for p in patches:
        text = p.text()
        for extra in (["--dry-run"], []):
            res = executor.run(
                ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", *extra],
                input=text,
                cwd=tree,
                check=False,
                timeout=60,
            )
            if res.returncode != 0:
                why = (res.stdout + res.stderr).strip().splitlines()[-1:] or ["no output"]
                raise BakeError(f"patch {p.name} does not apply to {tree}: {why[0]}")


def _run_build_rr(
    entry: Toolchain,
    tree: Path,
    objdir: Path,
    jobs: int | None,
    deadline: float,
    log_path: Path,
    say: Progress,
    expected: int | None = None,
) -> int:
    """build-rr.sh; how many objects it compiled (``expected``: the last build's count)."""
    jobs = jobs or os.cpu_count() or 1
    argv = build_argv(entry.platform, jobs=jobs, prefix=entry.prefix, objdir=objdir)
    entry.dir.mkdir(parents=True)
    say(f"build-rr.sh {entry.platform} (log: {log_path})")
    progress = buildcache.Counter(
        say, "building the host tools", _compiled_object, expected, phase=_phase
    )
    try:
        buildcache.run_logged(
            argv,
            what=f"rumprun {entry.platform} toolchain build",
            log_path=log_path,
            deadline=deadline,
            cwd=tree,
            on_output=progress,
            tail=15,
        )
    except BakeError as exc:
        first, _, rest = str(exc).partition("\n")
        if str(log_path) not in first:
            first = f"{first.rstrip(':')} (log: {log_path})" + (":" if rest else "")
        raise BakeError(f"{first}\n{rest}".rstrip()) from exc
    return progress.done


def _compiled_object(line: str) -> str | None:
    """The object a line of build-rr.sh's output compiles (NetBSD make's ``#   compile``)."""
    return line.split()[-1] if line.startswith("#   compile") else None


# build-rr.sh's own milestones, in the order they appear in its output.
_PHASES = (
    (">> Now that we have the appropriate tools", "building the rump kernel"),
    (">> Rump kernel components built", "building rumprun's app tools"),
    (">> installing userspace headers", "building the userspace libraries (libc, pthread…)"),
    (">> Finished", "installing"),
)


def _phase(line: str) -> str | None:
    for marker, phase in _PHASES:
        if line.startswith(marker):
            return phase
    return None


def _write_meta(entry: Toolchain, src: RumprunSource, seconds: float, executor: Executor) -> None:
    doc = {
        "platform": entry.platform,
        "key": entry.key,
        "source": {"kind": src.kind, "path": str(src.path), "digest": src.digest},
        "patches": [p.name for p in patches_for(entry.platform)],
        "compiler": compiler_version(executor),
        "flags": {"HOST_CFLAGS": HOST_CFLAGS, "buildrump.sh": list(BUILDRUMP_FLAGS)},
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }
    tmp = entry.meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.rename(tmp, entry.meta_path)  # the entry counts from this moment
