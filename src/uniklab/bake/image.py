"""Image manifests and the content-addressed image store.

An image lives in ``<home>/images/<digest>/`` (kernel, initrd, manifest.json).  It is
written to a temporary directory and renamed into place, so a half-written image is never
seen; the digest covers every input, so baking the same inputs twice reuses the result.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from uniklab.bake.recipe import ProbeSpec
from uniklab.errors import NotFoundError

MANIFEST = "manifest.json"


class KernelInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    release: str
    source: str
    file: str = "kernel"
    # host, specialised:<profile>:<key>, or path: which kernel the bake chose.
    choice: str = "host"


class ImageDisk(BaseModel):
    """A read-only data disk of the image (rumprun-packages' data.iso), mounted at boot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    mount: str
    size: int


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    tag: str
    digest: str
    # linux-initramfs, linux-erofs (a read-only root disk), or rumprun (a unikernel).
    kind: str = "linux-initramfs"
    platforms: list[str] = Field(default_factory=lambda: ["qemu", "xen"])
    created: float
    kernel: KernelInfo
    # The kernel file per backend where they differ (rumprun: hw_virtio, xen_pv).
    kernels: dict[str, str] = Field(default_factory=dict)
    disks: list[ImageDisk] = Field(default_factory=list)
    initrd: str = "initrd"  # the root's file: the initramfs, or the erofs disk; "" for none
    compression: str
    size: int  # kernel + root, bytes
    kernel_size: int
    initrd_size: int
    cmdline: str
    acpi: bool = True  # the kernel finds virtio-mmio devices through ACPI tables
    entrypoint: list[str]
    ports: list[int]
    probe: ProbeSpec
    memory: str
    files: int
    bake_seconds: float

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def root_kind(self) -> str:
        """initramfs or erofs (rumprun: rumprun, the app is the kernel)."""
        return self.kind.removeprefix("linux-")

    @property
    def is_rumprun(self) -> bool:
        return self.kind == "rumprun"

    def parts(self) -> list[tuple[str, int]]:
        """What the image is made of, (what, bytes), for one-line summaries."""
        if self.is_rumprun:
            disks = [("data disk", self.initrd_size)] if self.disks else []
            return [("unikernel", self.kernel_size), *disks]
        return [("kernel", self.kernel_size), (self.root_kind, self.initrd_size)]

    @property
    def block_root(self) -> bool:
        return self.root_kind == "erofs"

    @property
    def short_digest(self) -> str:
        return self.digest.split(":", 1)[-1][:12]


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
