"""Module resolution against the host's Debian kernel tree and a fake tree for the odd cases."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from uniklab.bake.kmod import (
    KernelModule,
    kernel_release_of,
    module_bytes,
    module_closure,
    normalize_module_name,
)
from uniklab.errors import BakeError

BOOT_KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))
needs_kernel = pytest.mark.skipif(
    not BOOT_KERNELS or not Path("/lib/modules", BOOT_KERNELS[-1].name[8:]).is_dir(),
    reason="no Debian kernel with modules in /boot and /lib/modules",
)


def boot_release() -> str:
    return BOOT_KERNELS[-1].name[len("vmlinuz-") :]


def dep_table(release: str) -> dict[str, list[str]]:
    """modules.dep parsed independently: module name -> names of all its dependencies."""
    table: dict[str, list[str]] = {}
    for line in (Path("/lib/modules") / release / "modules.dep").read_text().splitlines():
        head, _, tail = line.partition(":")
        table[normalize_module_name(head)] = [normalize_module_name(p) for p in tail.split()]
    return table


@needs_kernel
def test_kernel_release_of_host_bzimage() -> None:
    for image in BOOT_KERNELS:
        assert kernel_release_of(image) == image.name[len("vmlinuz-") :]


def test_kernel_release_of_rejects_non_bzimage(tmp_path: Path) -> None:
    junk = tmp_path / "vmlinuz"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(BakeError, match="not an x86 bzImage"):
        kernel_release_of(junk)
    with pytest.raises(BakeError, match="cannot read"):
        kernel_release_of(tmp_path / "missing")


def test_kernel_release_of_synthetic_header(tmp_path: Path) -> None:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x300).to_bytes(2, "little")
    version = b"9.9.9-test (builder@example) #1 SMP\0"
    image[0x500 : 0x500 + len(version)] = version
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(image))
    assert kernel_release_of(path) == "9.9.9-test"


@needs_kernel
def test_virtio_closure_is_a_valid_load_order() -> None:
    release = boot_release()
    mods = module_closure(
        ["virtio-net", "virtio_mmio", "virtio_blk", "virtio_pci"], kernel_release=release
    )
    names = [m.name for m in mods]
    assert len(names) == len(set(names))
    assert names.index("virtio_ring") < names.index("virtio") < names.index("virtio_mmio")
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")
    deps = dep_table(release)
    for i, name in enumerate(names):
        for dep in deps[name]:
            assert dep in names[:i], f"{dep} must load before {name}"
    for m in mods:
        assert str(m.image_path).startswith(f"/lib/modules/{release}/kernel/")
        assert m.image_path.suffix == ".ko"
        assert m.source.is_file()
    assert module_bytes(mods[0])[:4] == b"\x7fELF"


@needs_kernel
def test_order_is_stable_and_follows_the_request() -> None:
    release = boot_release()
    a = [m.name for m in module_closure(["virtio_blk", "virtio_net"], kernel_release=release)]
    b = [m.name for m in module_closure(["virtio_blk", "virtio_net"], kernel_release=release)]
    assert a == b
    assert a == ["virtio_ring", "virtio", "virtio_blk", "failover", "net_failover", "virtio_net"]


@needs_kernel
def test_unknown_module_on_the_real_tree() -> None:
    with pytest.raises(BakeError, match="unknown kernel module no_such_mod"):
        module_closure(["no-such-mod"], kernel_release=boot_release())


def fake_tree(root: Path) -> Path:
    """A modules tree with plain, xz, gz and zst modules, and a builtin one."""
    rel = root / "1.2.3-fake"
    (rel / "kernel/drivers").mkdir(parents=True)
    (rel / "kernel/drivers/base_one.ko").write_bytes(b"\x7fELF base")
    (rel / "kernel/drivers/mid-two.ko.xz").write_bytes(lzma.compress(b"\x7fELF mid"))
    (rel / "kernel/drivers/top.ko.gz").write_bytes(gzip.compress(b"\x7fELF top"))
    (rel / "kernel/drivers/needs_ghost.ko").write_bytes(b"\x7fELF")
    (rel / "modules.dep").write_text(
        "kernel/drivers/top.ko.gz: kernel/drivers/mid-two.ko.xz kernel/drivers/base_one.ko\n"
        "kernel/drivers/mid-two.ko.xz: kernel/drivers/base_one.ko\n"
        "kernel/drivers/base_one.ko:\n"
        "kernel/drivers/needs_ghost.ko: kernel/drivers/ghost.ko\n"
    )
    (rel / "modules.builtin").write_text(
        "kernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio.ko\n"
    )
    return root


def test_fake_tree_compressions_and_builtins(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    mods = module_closure(
        ["ext4", "top", "mid_two"], kernel_release="1.2.3-fake", modules_root=root
    )
    assert [m.name for m in mods] == ["base_one", "mid_two", "top"]
    assert [m.compression for m in mods] == ["none", "xz", "gz"]
    assert mods[1].image_path == PurePosixPath("/lib/modules/1.2.3-fake/kernel/drivers/mid-two.ko")
    assert mods[2].image_path.name == "top.ko"
    assert [module_bytes(m) for m in mods] == [b"\x7fELF base", b"\x7fELF mid", b"\x7fELF top"]
    assert module_closure(["virtio"], kernel_release="1.2.3-fake", modules_root=root) == []


def test_fake_tree_errors(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    with pytest.raises(BakeError, match="unknown kernel module nope"):
        module_closure(["nope"], kernel_release="1.2.3-fake", modules_root=root)
    with pytest.raises(BakeError, match=r"ghost.*needed by needs_ghost"):
        module_closure(["needs_ghost"], kernel_release="1.2.3-fake", modules_root=root)
    with pytest.raises(BakeError, match=r"modules\.dep: not found"):
        module_closure(["top"], kernel_release="0.0.0", modules_root=root)
    (root / "1.2.3-fake/kernel/drivers/base_one.ko").unlink()
    with pytest.raises(BakeError, match=r"base_one.*missing"):
        module_closure(["top"], kernel_release="1.2.3-fake", modules_root=root)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
def test_zstd_module(tmp_path: Path) -> None:
    plain = tmp_path / "m.ko"
    plain.write_bytes(b"\x7fELF zstd module " * 100)
    subprocess.run(["zstd", "-q", str(plain)], check=True, timeout=10)
    m = KernelModule("m", PurePosixPath("/lib/modules/x/m.ko"), tmp_path / "m.ko.zst", "zst")
    assert module_bytes(m) == plain.read_bytes()


def test_zstd_missing_is_a_bake_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    m = KernelModule("m", PurePosixPath("/lib/modules/x/m.ko"), tmp_path / "m.ko.zst", "zst")
    with pytest.raises(BakeError, match="install zstd"):
        module_bytes(m)


def test_names_normalise() -> None:
    assert normalize_module_name("virtio-net") == "virtio_net"
    assert normalize_module_name("kernel/drivers/x/a-b.ko.zst") == "a_b"
