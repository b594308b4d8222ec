"""Rebuild a damaged state store from what is on disk (``uniklab store rebuild``).

The rows are lost; what uniklab wrote for other reasons is not.  Each image directory's
manifest names the name:tag it was baked as, so the image index comes back.  A runtime
directory holds a guest's pid file but not what its row knew (image, NICs, ports,
restart policy), so a guest still running from one cannot be managed again: it is
reported, and ``uniklab gc`` stops it.  Hosts and networks exist only as rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from uniklab.bake.image import MANIFEST, ImageStore, Manifest
from uniklab.errors import StoreError, UsageError
from uniklab.executor import local
from uniklab.paths import Paths
from uniklab.state.store import Store

log = logging.getLogger(__name__)

# The files of one SQLite database in WAL mode: they move together or not at all (a WAL
# left beside a new database would be another database's pages).
_SIDECARS = ("", "-wal", "-shm")


@dataclass(frozen=True)
class RunDir:
    """A guest's runtime directory found on disk; ``pid``: its QEMU, if still running."""

    path: Path
    pid: int | None


@dataclass(frozen=True)
class Rebuilt:
    moved_to: Path | None  # where the old file went (None: there was none)
    tagged: list[Manifest]  # each image, tagged again as its manifest says
    untagged: list[Manifest] = field(default_factory=list)  # a newer image has its tag
    unreadable: list[Path] = field(default_factory=list)  # image dirs without a manifest
    rundirs: list[RunDir] = field(default_factory=list)
    netdirs: list[Path] = field(default_factory=list)  # networks whose rows are lost


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    # Two rebuilds at once would each move "the damaged file" aside: the second one the
    # fresh store the first just made.  flock on the home directory leaves no file behind.
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _why_rebuild(db: Path, force: bool) -> str:
    """Why the file at ``db`` goes aside: "corrupt" (damaged), "old" (replaced by
    ``force``), "" (no store yet).  Raises for a store that must stay."""
    if not db.exists() or db.stat().st_size == 0:
        return ""
    try:
        store = Store(db)
    except StoreError:
        if not force:
            raise
        return "old"
    try:
        if store.damage is not None:
            return "corrupt"
    finally:
        store.close()
    if not force:
        raise UsageError(
            f"{db} is not damaged: nothing to rebuild (--force replaces it anyway, "
            "forgetting its instances, networks and hosts)"
        )
    return "old"


def _move_aside(db: Path, why: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = db.with_name(f"{db.name}.{why}-{stamp}")
    n = 1
    while any(Path(f"{target}{s}").exists() for s in _SIDECARS):
        n += 1
        target = db.with_name(f"{db.name}.{why}-{stamp}.{n}")
    for suffix in _SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{db}{suffix}", f"{target}{suffix}")
    log.info("moved %s aside to %s", db, target)
    return target


def _manifests(images: ImageStore) -> tuple[list[Manifest], list[Path]]:
    found: list[Manifest] = []
    unreadable: list[Path] = []
    for d in sorted(images.root.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue  # staging directories of bakes: never images
        try:
            m = Manifest.model_validate_json((d / MANIFEST).read_text())
        except (OSError, ValidationError) as exc:
            log.info("%s: no readable manifest: %s", d, exc)
            unreadable.append(d)
            continue
        if images.dir_for(m.digest) != d:
            unreadable.append(d)  # a manifest that does not name its own directory
            continue
        found.append(m)
    return found, unreadable


def _rundirs(paths: Paths) -> list[RunDir]:
    """The runtime directories on disk, each with the guest still running out of it (as
    the backends whose guests run on this machine list what they run for the home)."""
    from uniklab.backends import registry  # the store must not load a backend to open
    from uniklab.hosts.service import HostService

    ctx = registry.BackendContext(host=HostService.local(), executor=local, cache=paths.cache)
    running: dict[str, int | None] = {}
    for name in registry.names():
        if registry.get(name).local_only:
            running |= {o.key: o.ident for o in registry.create(name, ctx).owned(paths.run)}
    dirs = sorted(paths.run.iterdir()) if paths.run.is_dir() else []
    return [RunDir(d, running.get(str(d))) for d in dirs]


def rebuild(paths: Paths, *, force: bool = False) -> Rebuilt:
    """Move a damaged ``state.db`` aside, make a new store and index the images on disk.

    A store that opens is left alone unless ``force``: rebuilding forgets its instances,
    networks and hosts.  Tags are restored as the manifests name them; when two images
    claim one name:tag, the newer keeps it (as it did when it was baked).
    """
    paths = paths.ensure()
    with _locked(paths.home):
        why = _why_rebuild(paths.db, force)
        moved = _move_aside(paths.db, why) if why else None
        store = Store(paths.db)
        try:
            manifests, unreadable = _manifests(ImageStore(paths.images))
            newest: dict[str, Manifest] = {}
            for m in sorted(manifests, key=lambda m: m.created):
                newest[m.ref] = m
            for m in newest.values():
                store.put_image(m.name, m.tag, m.digest)
        finally:
            store.close()
    tagged = sorted(newest.values(), key=lambda m: m.ref)
    untagged = [m for m in manifests if newest[m.ref] is not m]
    netdirs = sorted(d for d in (paths.home / "net").glob("*") if d.is_dir())
    return Rebuilt(moved, tagged, untagged, unreadable, _rundirs(paths), netdirs)
