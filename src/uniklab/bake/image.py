"""Image manifests: what a baked image is made of (``manifest.json`` in its directory of
the image store, ``bake.imagestore``, whose ``ImageStore`` and ``MANIFEST`` are also
importable from here).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from uniklab.bake.imagestore import MANIFEST as MANIFEST
from uniklab.bake.imagestore import ImageStore as ImageStore
from uniklab.bake.recipe import ProbeSpec


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
