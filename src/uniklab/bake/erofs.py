"""A read-only root: the image's tree as an erofs filesystem on a virtio disk.

An initramfs is unpacked into ramfs pages the guest keeps for its whole life, so the
image's contents set the guest's memory floor.  From an erofs disk the same files are page
cache the kernel can drop and read again (bench/bench_small.py measured the Redis floor at
32 MiB instead of 44 MiB).  The tree is the baker's cpio archive written out as files;
``mkfs.erofs`` (erofs-utils) makes the filesystem with every timestamp, owner and the UUID
fixed, so the same archive gives the same bytes.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Literal

from uniklab.bake.cpio import CpioArchive
from uniklab.errors import BakeError, CommandError
from uniklab.executor import local

MKFS = "mkfs.erofs"
# Fixed so that an image's bytes depend only on its contents.
UUID = "75e1c1ab-0000-4000-8000-000000000000"
_MKFS_TIMEOUT = 120.0

ErofsCompression = Literal["lz4hc", "none"]


def write_tree(arc: CpioArchive, root: Path) -> None:
    """Write the archive's entries under ``root`` (device nodes are skipped: the kernel
    mounts devtmpfs on /dev of a disk root before it opens the console)."""
    for rel, mode, data, _rdev in arc.entries():
        path = root / rel
        if stat.S_ISDIR(mode):
            path.mkdir(exist_ok=True)
            path.chmod(stat.S_IMODE(mode))
        elif stat.S_ISREG(mode):
            path.write_bytes(data)
            path.chmod(stat.S_IMODE(mode))
        elif stat.S_ISLNK(mode):
            os.symlink(data.decode(), path)


def make_erofs(arc: CpioArchive, out: Path, compression: ErofsCompression = "lz4hc") -> int:
    """Write ``arc`` as an erofs image at ``out``; returns its size in bytes."""
    if shutil.which(MKFS) is None:
        raise BakeError(f"{MKFS} not found: apt-get install erofs-utils (or bake --root initramfs)")
    with tempfile.TemporaryDirectory(prefix="uniklab-erofs-", dir=out.parent) as tmp:
        tree = Path(tmp) / "root"
        tree.mkdir()
        write_tree(arc, tree)
        argv = [MKFS, "--quiet", "--all-root", "-T0", f"-U{UUID}"]
        if compression == "lz4hc":
            argv.append("-zlz4hc")
        argv += [str(out), str(tree)]
        try:
            local.run(argv, timeout=_MKFS_TIMEOUT)
        except CommandError as exc:
            raise BakeError(f"{MKFS} failed: {exc}") from exc
    return out.stat().st_size
