"""The pinned third-party sources of real rumprun unikernels, and where to find them.

rumprun's own build clones submodules and downloads Redis; uniklab instead uses the same
pinned commits from a local copy (``--source DIR|TARBALL``, or ``$UNIKLAB_RUMPRUN_SOURCES``,
a directory holding the tarballs, or, in a development checkout, ``<repo>/../shared/rumprun``)
and, when there is none, clones them from upstream with git.  A tarball is used only if its
sha256 is the pinned one; an unpacked tree is keyed by its content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from uniklab import buildcache
from uniklab.buildcache import Progress
from uniklab.errors import BakeError, CommandError, UsageError
from uniklab.executor import local

log = logging.getLogger(__name__)

ENV = "UNIKLAB_RUMPRUN_SOURCES"
CLONE_TIMEOUT = 30 * 60.0
CHECKOUT = "checkout"  # the development checkout's shared copy: looked at, not required


@dataclass(frozen=True)
class Pin:
    """One pinned source: its tarball (as kept offline) and the upstream commit it holds."""

    name: str
    tarball: str
    top: str  # the tarball's top folder
    sha256: str
    url: str
    commit: str
    submodules: tuple[tuple[str, str], ...] = ()  # (path, commit) the commit records


RUMPRUN = Pin(
    name="rumprun",
    tarball="rumprun-b04d422-src.tar.xz",
    top="rumprun",
    sha256="a9e8f5acd21c8fa0469661f0bdea38c358cabe88369d11408906c5219ff2e8a3",
    url="https://github.com/rumpkernel/rumprun.git",
    commit="b04d422",  # 2020-05-11, the last commit
    submodules=(
        ("buildrump.sh", "9c9b022cb2115734935e50600c867a3bc230b32c"),
        ("src-netbsd", "b8b951e911a2fc555848a2785a9998bc128530b6"),
    ),
)
RUMPRUN_PACKAGES = Pin(
    name="rumprun-packages",
    tarball="rumprun-packages-ffbeedb.tar.xz",
    top="rumprun-packages",
    sha256="03d832f11b9ea8caff4b3daebcf234a460073bde2989c2e81e27bb00a3774ea1",
    url="https://github.com/rumpkernel/rumprun-packages.git",
    commit="ffbeedb93abf5f81df0e554d1d53a55217f0d85a",
)
REDIS = Pin(
    name="redis",
    tarball="redis-3.0.6.tar.gz",
    top="redis-3.0.6",
    sha256="ce10c56441229f071ffcce73e0ec78bc0b4640c94ba6f6d19502cef40d0299a6",
    url="https://github.com/redis/redis.git",
    commit="3.0.6",  # the tag rumprun-packages' redis/Makefile downloads
)
PINS = (RUMPRUN, RUMPRUN_PACKAGES, REDIS)

# Left out of a tree's digest: git metadata and what build-rr.sh writes into the tree
# (obj-<machine>-<platform>/, the default rumprun/ destination, .prevbuild).
_TREE_SKIP_TOP = ("obj-", "rumprun", ".prevbuild")


@dataclass(frozen=True)
class RumprunSource:
    """Where the rumprun tree comes from, and the digest that stands for its content."""

    kind: Literal["tarball", "directory", "git"]
    path: Path
    digest: str

    def describe(self) -> str:
        return f"{self.kind} {self.path}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(pin: Pin, tarball: Path) -> Path:
    """``tarball`` if its sha256 is the pinned one, else a one-line BakeError."""
    got = sha256_file(tarball)
    if got != pin.sha256:
        raise BakeError(
            f"{tarball}: sha256 {got} is not the pinned {pin.sha256} of {pin.tarball} "
            f"({pin.name} {pin.commit}); use an unchanged copy"
        )
    return tarball


def dev_sources() -> Path:
    """``<repo>/../shared/rumprun`` of a development checkout (where tests and CI keep the
    pinned tarballs); it may not exist."""
    repo = Path(__file__).resolve().parents[3]  # src/uniklab/toolchain/sources.py
    return repo.parent / "shared" / "rumprun"


def tarball(pin: Pin, source: Path | None = None) -> Path:
    """The verified tarball of ``pin``: in ``source`` (a directory or the tarball itself),
    else in $UNIKLAB_RUMPRUN_SOURCES, else in a development checkout's shared copy."""
    where, origin = _place(source)
    folder = where.parent if where.is_file() else where  # a file: look beside it
    if (folder / pin.tarball).is_file():
        return verify(pin, folder / pin.tarball)
    if origin != CHECKOUT:
        raise UsageError(f"{origin} {where}: no {pin.tarball} there")
    raise BakeError(
        f"{pin.tarball} not found: give its directory with --source DIR or ${ENV} "
        f"(the pinned {pin.name} {pin.commit}, sha256 {pin.sha256[:12]}…)"
    )


def resolve_rumprun(
    source: Path | None = None,
    *,
    fetch: bool = True,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> RumprunSource:
    """Where to take rumprun from: ``source`` (its tarball, a directory holding it, or an
    unpacked tree), else $UNIKLAB_RUMPRUN_SOURCES, else a development checkout's shared
    copy, else (``fetch``) a clone of the pinned commits from upstream."""
    found = _local_rumprun(*_place(source))
    if found is not None:
        return found
    tried = f"no --source, no ${ENV}, no {dev_sources()}"
    if not fetch:
        raise BakeError(
            f"rumprun sources not found ({tried}): give --source DIR|TARBALL or set ${ENV} "
            f"to a directory holding {RUMPRUN.tarball}"
        )
    try:
        return clone_rumprun(cache, progress)
    except BakeError as exc:
        raise BakeError(
            f"rumprun sources not found ({tried}) and {exc}: give --source DIR|TARBALL or "
            f"set ${ENV} to a directory holding {RUMPRUN.tarball}"
        ) from exc


def _place(source: Path | None) -> tuple[Path, str]:
    """Where to look, and the name an error gives it (the checkout's copy is optional)."""
    if source is not None:
        return source.expanduser(), "--source"
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser(), f"${ENV}"
    return dev_sources(), CHECKOUT


def _local_rumprun(where: Path, origin: str) -> RumprunSource | None:
    if where.is_file():
        if not where.name.endswith((".tar.xz", ".tar.gz", ".tgz", ".tar")):
            raise UsageError(f"{origin} {where}: not a tarball or a directory")
        return RumprunSource("tarball", verify(RUMPRUN, where), f"sha256:{RUMPRUN.sha256}")
    if not where.is_dir():
        if origin == CHECKOUT:
            return None
        raise UsageError(f"{origin} {where}: no such file or directory")
    if (where / RUMPRUN.tarball).is_file():
        return RumprunSource(
            "tarball", verify(RUMPRUN, where / RUMPRUN.tarball), f"sha256:{RUMPRUN.sha256}"
        )
    for tree in (where, where / RUMPRUN.top):
        if is_rumprun_tree(tree):
            return RumprunSource("directory", tree, f"tree:{tree_digest(tree)}")
    if origin == CHECKOUT:
        return None
    raise UsageError(
        f"{origin} {where}: neither {RUMPRUN.tarball} nor an unpacked rumprun tree "
        "(build-rr.sh, buildrump.sh/, src-netbsd/) there"
    )


def is_rumprun_tree(path: Path) -> bool:
    """build-rr.sh with both submodules filled in (an empty submodule is a plain clone)."""
    return (
        (path / "build-rr.sh").is_file()
        and (path / "buildrump.sh" / "buildrump.sh").is_file()
        and (path / "src-netbsd" / "sys").is_dir()
    )


def tree_digest(root: Path) -> str:
    """sha256 over the tree's relative paths, exec bits, symlink targets and contents."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        top = rel_dir == Path(".")
        dirnames[:] = sorted(
            d for d in dirnames if d != ".git" and not (top and d.startswith(_TREE_SKIP_TOP))
        )
        for name in sorted(filenames):
            if name == ".git" or (top and name.startswith(_TREE_SKIP_TOP)):
                continue
            path = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if path.is_symlink():
                h.update(f"L {rel} {os.readlink(path)}\n".encode())
                continue
            mode = "x" if os.access(path, os.X_OK) else "-"
            h.update(f"F {rel} {mode} {sha256_file(path)}\n".encode())
        for name in dirnames:
            path = Path(dirpath) / name
            if path.is_symlink():  # os.walk does not descend into it; record the link
                h.update(f"L {(rel_dir / name).as_posix()} {os.readlink(path)}\n".encode())
    return h.hexdigest()


def clone_rumprun(cache: Path | None = None, progress: Progress | None = None) -> RumprunSource:
    """The pinned commits cloned from upstream once per machine (git clone, checkout,
    submodule update), under ``cache/sources/``."""
    say = progress or buildcache.quiet
    if shutil.which("git") is None:
        raise BakeError("git is not installed to fetch them (apt-get install git)")
    root = cache or buildcache.root("toolchains", "UNIKLAB_TOOLCHAIN_CACHE")
    dest = root / "sources" / f"rumprun-{RUMPRUN.commit}"
    digest = "git:" + ",".join([RUMPRUN.commit, *(c for _, c in RUMPRUN.submodules)])
    if is_rumprun_tree(dest):
        return RumprunSource("git", dest, digest)
    with buildcache.locked(root / f"rumprun-{RUMPRUN.commit}-clone.lock", say, "the clone"):
        if is_rumprun_tree(dest):
            return RumprunSource("git", dest, digest)
        work = buildcache.staging(root)
        try:
            tree = work / RUMPRUN.top
            say(f"cloning {RUMPRUN.url} at {RUMPRUN.commit}")
            try:
                local.run(["git", "clone", "-q", RUMPRUN.url, tree], timeout=CLONE_TIMEOUT)
                local.run(["git", "-C", tree, "checkout", "-q", RUMPRUN.commit], timeout=300)
                local.run(
                    ["git", "-C", tree, "submodule", "update", "--init"], timeout=CLONE_TIMEOUT
                )
                head = local.run(["git", "-C", tree, "rev-parse", "HEAD"], timeout=60)
                status = local.run(["git", "-C", tree, "submodule", "status"], timeout=60)
            except CommandError as exc:
                raise BakeError(f"fetching {RUMPRUN.url} failed: {exc}") from exc
            if not head.stdout.strip().startswith(RUMPRUN.commit):
                raise BakeError(
                    f"{RUMPRUN.url}: HEAD is {head.stdout.strip()}, not {RUMPRUN.commit}"
                )
            _check_submodules(status.stdout)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tree, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("cloned rumprun %s into %s", RUMPRUN.commit, dest)
    return RumprunSource("git", dest, digest)


def _check_submodules(status: str) -> None:
    """``git submodule status`` shows the pinned commits (lines: ' <sha> <path> (…)')."""
    have = {}
    for line in status.splitlines():
        parts = line[1:].split()
        if len(parts) >= 2:
            have[parts[1]] = parts[0]
    for path, commit in RUMPRUN.submodules:
        if have.get(path) != commit:
            raise BakeError(
                f"submodule {path} is at {have.get(path, 'nothing')}, not the pinned {commit}"
            )
