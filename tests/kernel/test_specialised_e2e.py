"""End to end: build the specialised kernel (once per machine: the cache is machine-wide, so
only the first run pays minutes), bake Redis with it, boot it in 48 MiB, SET/GET, destroy;
then the smallest image (Redis built static from Debian's source, on a read-only erofs root)
in 32 MiB, and nginx on an erofs root (its log directories are tmpfs mounts)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from uniklab.cli.main import main
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


@pytest.fixture
def small_lab() -> Iterator[tuple[Lab, Path]]:
    home = Path(tempfile.mkdtemp(prefix="ukl-s-", dir="/tmp"))
    lab = Lab(Paths(home))
    try:
        yield lab, home
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
        lab.close()
        leftover = _qemu_left(str(home))
        shutil.rmtree(home, ignore_errors=True)
        assert not leftover, f"QEMU left running: {leftover}"


def test_specialised_kernel_serves_redis_in_48m(small_lab: tuple[Lab, Path]) -> None:
    entry = kbuild.build("microvm")
    assert entry.has("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES") and not entry.has("CONFIG_MODULES")
    lab, home = small_lab
    host = lab.bake("redis", tag="generic").manifest
    m = lab.bake("redis", tag="small", kernel="specialised", root="initramfs").manifest
    assert m.digest != host.digest  # the kernel choice is part of the digest
    assert m.kernel.choice == f"specialised:microvm:{entry.key}"
    assert m.acpi is False and host.acpi is True
    assert m.kernel_size == entry.bzimage.stat().st_size
    assert m.compression == "gzip" and host.compression == "lz4"
    assert "rootfstype=ramfs" in m.cmdline and "rootfstype" not in host.cmdline
    assert lab.bake("redis", tag="small", kernel="specialised", root="initramfs").cached

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


def test_static_redis_on_erofs_serves_in_32m(small_lab: tuple[Lab, Path]) -> None:
    lab, home = small_lab
    # The first bake on a machine fetches Debian's redis source and builds it (~30 s).
    m = lab.bake("redis-static", kernel="specialised").manifest
    assert (m.kind, m.platforms, m.acpi) == ("linux-erofs", ["qemu"], False)
    assert m.size <= 6 * 2**20, f"image {m.size} bytes"  # the size goal
    assert lab.bake("redis-static", kernel="specialised").cached

    view = lab.run("redis-static", RunOptions(name="s1", memory="32M", timeout=90))
    argv = json.loads((Path(view.row.runtime["rundir"]) / "argv.json").read_text())
    assert "-initrd" not in argv
    assert any(a.endswith("root.erofs,format=raw,if=none,readonly=on") for a in argv)
    client = redis.Redis("127.0.0.1", view.forwards[0][0], socket_timeout=10)
    assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
    info = client.info("server")
    assert info["redis_version"].startswith("7.") and info["redis_mode"] == "standalone"
    logs = lab.logs("s1")
    assert "net eth0" in logs and "via static gw 10.0.2.2" in logs  # slirp: no DHCP
    # A second guest shares the read-only root file.
    lab.run("redis-static", RunOptions(name="s2", memory="32M", timeout=90))
    assert {v.state for v in lab.ps()} == {"running"}
    lab.destroy("s1")
    lab.destroy("s2")
    assert lab.store.instances() == [] and _qemu_left(str(home)) == []


def test_an_erofs_image_is_refused_on_xen_before_anything_starts(
    small_lab: tuple[Lab, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lab, home = small_lab
    monkeypatch.setenv("UNIKLAB_HOME", str(home))
    lab.bake("redis-static", kernel="specialised")
    # Inventory only: the check comes before any connection to the host.
    assert main(["host", "add", "dom0", "--ssh=root@127.0.0.1", "--port=1"]) == 0
    capsys.readouterr()
    code = main(["run", "redis-static", "--host", "dom0", "--net", "xenbr0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "runs on qemu, not xen" in err and "root: erofs" in err
    assert lab.store.instances() == []


def test_nginx_writes_its_logs_on_a_read_only_root(small_lab: tuple[Lab, Path]) -> None:
    lab, _ = small_lab
    m = lab.bake("nginx", kernel="specialised").manifest
    assert m.block_root
    view = lab.run("nginx", RunOptions(name="n1", memory="64M", timeout=90))
    assert lab.check("n1").ok  # GET / -> 200: nginx opened /var/log/nginx for writing
    assert "warning: mount tmpfs" not in lab.logs("n1")
    assert view.state == "running"
