"""The read-only erofs root: what the baker writes, when it chooses it, what it refuses.

The kernel here is a stand-in file with a .config beside it (baking never boots it); the
erofs images are real (mkfs.erofs) and read back with fsck.erofs --extract.  Booting them
is tested in tests/kernel/test_specialised_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from uniklab.bake import baker, recipe
from uniklab.bake.image import ImageStore, Manifest
from uniklab.errors import BakeError, UsageError

CONFIG = "\n".join(
    f"CONFIG_{s}=y"
    for s in ("EROFS_FS", "EROFS_FS_ZIP", "VIRTIO_BLK", "VIRTIO_MMIO_CMDLINE_DEVICES")
)


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    d = tmp_path / "k"
    d.mkdir()
    (d / "config").write_text(CONFIG + "\n")
    path = d / "bzImage"
    path.write_bytes(b"not really a kernel")
    return path


def _recipe(**extra: object) -> recipe.Recipe:
    doc: dict[str, object] = {"name": "app", "binary": "/bin/true", "ports": [80]}
    doc.update(extra)
    return recipe.Recipe.model_validate(doc)


def _bake(rec: recipe.Recipe, home: Path, kernel: Path, **kw: str) -> Manifest:
    store = ImageStore(home / "images")
    return baker.bake(
        rec, recipe_dir=None, store=store, cache=home, kernel=str(kernel), **kw
    ).manifest


def _extract(home: Path, m: Manifest, out: Path) -> Path:
    image = ImageStore(home / "images").initrd_path(m)
    subprocess.run(["fsck.erofs", f"--extract={out}", str(image)], check=True, capture_output=True)
    return out


def test_erofs_is_the_default_where_the_kernel_mounts_it(tmp_path: Path, kernel: Path) -> None:
    rec = _recipe(dirs=["/var/log/app"], env={"A": "1"})
    m = _bake(rec, tmp_path / "h", kernel)
    assert (m.kind, m.root_kind, m.block_root, m.platforms) == (
        "linux-erofs",
        "erofs",
        True,
        ["qemu"],
    )
    assert m.initrd == "root.erofs" and m.compression == "lz4"
    assert "root=/dev/vda rootfstype=erofs ro init=/init" in m.cmdline
    tree = _extract(tmp_path / "h", m, tmp_path / "x")
    doc = json.loads((tree / "uniklab" / "image.json").read_text())
    assert doc["entrypoint"] == ["/bin/true"] and doc["tmpfs"] == ["/var/log/app"]
    assert (tree / "init").stat().st_mode & 0o111 and (tree / "bin" / "true").is_file()
    assert (tree / "var" / "log" / "app").is_dir()
    assert (tree / "etc" / "resolv.conf").is_symlink()
    assert str((tree / "etc" / "resolv.conf").readlink()) == "/run/resolv.conf"
    assert m.size == m.kernel_size + m.initrd_size


def test_the_same_inputs_give_the_same_erofs_bytes(tmp_path: Path, kernel: Path) -> None:
    a = _bake(_recipe(), tmp_path / "a", kernel)
    b = _bake(_recipe(), tmp_path / "b", kernel)
    assert a.digest == b.digest
    read = [ImageStore(tmp_path / h / "images").initrd_path(a).read_bytes() for h in ("a", "b")]
    assert read[0] == read[1]


def test_uncompressed_erofs_and_an_explicit_initramfs(tmp_path: Path, kernel: Path) -> None:
    plain = _bake(_recipe(), tmp_path / "h", kernel, compression="none")
    packed = _bake(_recipe(), tmp_path / "h", kernel)
    assert plain.compression == "none" and plain.initrd_size > packed.initrd_size
    ramfs = _bake(_recipe(), tmp_path / "h", kernel, root="initramfs")
    assert ramfs.kind == "linux-initramfs" and ramfs.initrd == "initrd"
    assert "rootfstype=erofs" not in ramfs.cmdline
    assert len({plain.digest, packed.digest, ramfs.digest}) == 3


def test_refusals(tmp_path: Path, kernel: Path) -> None:
    with pytest.raises(UsageError, match="compressed with lz4 or none, not gzip"):
        _bake(_recipe(), tmp_path / "h", kernel, compression="gzip")
    with pytest.raises(UsageError, match="invalid root 'btrfs'"):
        _bake(_recipe(), tmp_path / "h", kernel, root="btrfs")
    hidden = _recipe(dirs=["/etc/app"], files=[{"dest": "/etc/app/conf", "content": "x"}])
    with pytest.raises(BakeError, match="inside /etc/app, which is a writable tmpfs"):
        _bake(hidden, tmp_path / "h", kernel)
    # The same recipe is fine in an initramfs (the directory is writable there).
    assert _bake(hidden, tmp_path / "h", kernel, root="initramfs").files >= 1
    no_erofs = kernel.with_name("config")
    no_erofs.write_text("CONFIG_VIRTIO_BLK=y\n")
    with pytest.raises(UsageError, match="needs a kernel with erofs and virtio-blk built in"):
        _bake(_recipe(), tmp_path / "h", kernel, root="erofs")
    assert _bake(_recipe(), tmp_path / "h", kernel).root_kind == "initramfs"
    assert not list((tmp_path / "h" / "images").glob(".tmp-*"))


def test_host_kernel_refuses_erofs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--root erofs needs a kernel"):
        baker.bake(
            _recipe(),
            recipe_dir=None,
            store=ImageStore(tmp_path / "images"),
            cache=tmp_path,
            kernel="host",
            root="erofs",
        )
