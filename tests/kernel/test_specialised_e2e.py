"""End to end: build the specialised kernel (once per machine: the cache is machine-wide, so
only the first run pays minutes), bake Redis with it, boot it in 48 MiB, SET/GET, destroy."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from uniklab.kernel import build as kbuild
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(45 * 60)]


def _unpack(initrd: Path) -> bytes:
    return subprocess.run(["gzip", "-dc", str(initrd)], capture_output=True, check=True).stdout


def _initrd_names(initrd: Path) -> list[str]:
    raw = _unpack(initrd)
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True)
    return listing.stdout.decode().split()


def _qemu_left(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", "qemu-system"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if marker in ln]


def test_specialised_kernel_serves_redis_in_48m() -> None:
    entry = kbuild.build("microvm")
    assert entry.has("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES") and not entry.has("CONFIG_MODULES")
    home = Path(tempfile.mkdtemp(prefix="ukl-k-", dir="/tmp"))
    lab = Lab(Paths(home))
    try:
        host = lab.bake("redis", tag="generic").manifest
        m = lab.bake("redis", tag="small", kernel="specialised").manifest
        assert m.digest != host.digest  # the kernel choice is part of the digest
        assert m.kernel.choice == f"specialised:microvm:{entry.key}"
        assert m.acpi is False and host.acpi is True
        assert m.kernel_size == entry.bzimage.stat().st_size
        assert m.compression == "gzip" and host.compression == "lz4"
        assert "rootfstype=ramfs" in m.cmdline and "rootfstype" not in host.cmdline
        assert lab.bake("redis", tag="small", kernel="specialised").cached

        names = _initrd_names(lab.images.initrd_path(m))
        assert not [n for n in names if n.endswith((".ko", ".ko.xz"))]
        doc_path = home / "image.json"
        raw = _unpack(lab.images.initrd_path(m))
        subprocess.run(
            ["cpio", "-i", "--quiet", "--to-stdout", "uniklab/image.json"],
            input=raw,
            stdout=doc_path.open("wb"),
            check=True,
        )
        assert json.loads(doc_path.read_text())["modules"] == []

        view = lab.run("redis:small", RunOptions(name="k1", memory="48M", timeout=90))
        argv = json.loads((Path(view.row.runtime["rundir"]) / "argv.json").read_text())
        assert "microvm,acpi=off,x-option-roms=off" in argv
        port = view.forwards[0][0]
        client = redis.Redis("127.0.0.1", port, socket_timeout=10)
        assert client.ping()
        client.set("uniklab", "small")
        assert client.get("uniklab") == b"small"
        lab.destroy("k1")
        assert lab.store.instances() == []
        assert _qemu_left(str(home)) == []
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
        lab.close()
        leftover = _qemu_left(str(home))
        shutil.rmtree(home, ignore_errors=True)
        assert not leftover, f"QEMU left running: {leftover}"
