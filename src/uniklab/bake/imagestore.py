"""The content-addressed image store: one directory per baked image.

An image lives in ``<home>/images/<digest>/`` (kernel, initrd, manifest.json).  It is
written to a temporary directory and renamed into place, so a half-written image is never
seen; the digest covers every input, so baking the same inputs twice reuses the result.

Apart from the manifests (``bake.image``, pydantic), which load when one is first read:
every command opens the store (a ``Lab`` does), few read a manifest (``uniklab ps`` none).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from uniklab.errors import NotFoundError

if TYPE_CHECKING:
    from uniklab.bake.image import Manifest

MANIFEST = "manifest.json"


class ImageStore:
    """The directory of baked images, keyed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def dir_for(self, digest: str) -> Path:
        return self.root / digest.replace(":", "-")

    def has(self, digest: str) -> bool:
        return (self.dir_for(digest) / MANIFEST).is_file()

    def manifest(self, digest: str) -> Manifest:
        path = self.dir_for(digest) / MANIFEST
        if not path.is_file():
            raise NotFoundError(f"image {digest[:19]} is not in the store (was it removed?)")
        from uniklab.bake.image import Manifest

        return Manifest.model_validate_json(path.read_text())

    def kernel_path(self, m: Manifest, backend: str | None = None) -> Path:
        """The kernel ``backend`` boots (the image's one kernel, unless it has one each)."""
        return self.dir_for(m.digest) / m.kernels.get(backend or "", m.kernel.file)

    def disk_paths(self, m: Manifest) -> list[Path]:
        return [self.dir_for(m.digest) / d.file for d in m.disks]

    def initrd_path(self, m: Manifest) -> Path:
        return self.dir_for(m.digest) / m.initrd

    def staging(self) -> Path:
        path = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=0o700)
        return path

    def commit(self, staging: Path, manifest: Manifest) -> None:
        """Write the manifest last, then rename the whole directory into place."""
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        target = self.dir_for(manifest.digest)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process committed the same digest first: theirs is identical.
            if not self.has(manifest.digest):
                raise
            shutil.rmtree(staging, ignore_errors=True)

    def remove(self, digest: str) -> None:
        shutil.rmtree(self.dir_for(digest), ignore_errors=True)

    def sweep_staging(self) -> list[Path]:
        """Remove staging directories left by a killed bake (their pid is gone)."""
        removed = []
        for path in self.root.glob(".tmp-*"):
            pid = path.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
