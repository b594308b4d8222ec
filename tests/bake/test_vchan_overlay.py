"""The initramfs of a Xen guest with channels (uniklab.bake.vchan) and the helper it
carries (uniklab.guest.build.build_vchan): compiled against Debian's libxen-dev."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from uniklab.bake import cpio
from uniklab.bake.cpio import CpioArchive
from uniklab.bake.vchan import HELPER, channel_initrd
from uniklab.guest.build import XEN_LIBDIR, build_vchan

pytestmark = pytest.mark.skipif(
    not (XEN_LIBDIR / "libxenvchan.a").is_file() or not shutil.which("gcc"),
    reason="needs libxen-dev (static Xen libraries) and a C compiler",
)


def _kernel(path: Path, release: str) -> Path:
    """A file with an x86 boot header naming ``release`` (what kernel_release_of reads); no
    module tree has that release, as for a kernel with the Xen drivers built in."""
    data = bytearray(0x400)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x100)
    version = f"{release} (test@test) #1".encode()
    data[0x300 : 0x300 + len(version)] = version
    path.write_bytes(bytes(data))
    return path


def _image(path: Path, entrypoint: list[str]) -> Path:
    arc = CpioArchive()
    arc.add_file("/bin/app", b"\x7fELF app", mode=0o755)
    doc = {"entrypoint": entrypoint, "modules": ["/lib/modules/x/a.ko"], "env": {}}
    arc.add_file("/uniklab/image.json", json.dumps(doc).encode())
    path.write_bytes(cpio.compress(arc.to_bytes(), "gzip"))
    return path


def test_helper_is_a_small_static_elf(tmp_path: Path) -> None:
    out = build_vchan(tmp_path)
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF" and out.stat().st_mode & 0o111
    assert b"/ld-linux" not in data and b"ld-musl" not in data
    assert build_vchan(tmp_path) == out  # cached
    if shutil.which("musl-gcc"):
        assert len(data) < 200_000


def test_overlay_puts_the_helper_in_front_of_the_entrypoint(tmp_path: Path) -> None:
    image = _image(tmp_path / "initrd", ["/bin/app", "--flag"])
    kernel = _kernel(tmp_path / "kernel", "0.0.0-uniklab-test")
    out = channel_initrd(image, kernel)
    assert cpio.compression_of(out) == "gzip"  # as the image was
    data = cpio.decompress(out)
    doc = json.loads(cpio.read_file(data, "/uniklab/image.json", every=True) or b"")
    assert doc["entrypoint"] == [HELPER, "--", "/bin/app", "--flag"]
    assert doc["modules"] == ["/lib/modules/x/a.ko"]  # drivers built in: none added
    assert (cpio.read_file(data, HELPER, every=True) or b"")[:4] == b"\x7fELF"
    assert cpio.read_file(data, "/bin/app") == b"\x7fELF app"
    # The same image gives the same bytes (uploaded once); an overlaid one comes back.
    assert channel_initrd(image, kernel) == out
    (tmp_path / "again").write_bytes(out)
    assert channel_initrd(tmp_path / "again", kernel) == out


def test_not_a_uniklab_image_is_a_bake_error(tmp_path: Path) -> None:
    from uniklab.errors import BakeError

    bare = tmp_path / "initrd"
    arc = CpioArchive()
    arc.add_file("/init", b"x", mode=0o755)
    bare.write_bytes(cpio.compress(arc.to_bytes(), "gzip"))
    with pytest.raises(BakeError, match="not a uniklab Linux image"):
        channel_initrd(bare, _kernel(tmp_path / "kernel", "0.0.0-uniklab-test"))


def test_the_dom0_end_refuses_bad_arguments(tmp_path: Path) -> None:
    helper = build_vchan(tmp_path)
    for args in (["x.sock", "0", "/local/domain/0/data"], ["x.sock", "5", "data/vchan/1/0"]):
        r = subprocess.run([helper, "--listen", *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r
        assert "usage: uniklab-vchan --listen SOCK DOMID" in r.stderr


def test_the_dom0_end_listens_and_closes_a_client_it_cannot_serve(tmp_path: Path) -> None:
    """Off Xen (no xenstore here) each client is closed at once and the helper says why;
    it listens on for the next, as in a dom0 whose guest has not served its vchan yet."""
    helper = build_vchan(tmp_path / "cache")
    sock = tmp_path / "6379.sock"
    path = "/local/domain/5/data/vchan/6379/0"
    proc = subprocess.Popen(
        [helper, "--listen", str(sock), "5", path], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.is_socket():
            assert time.monotonic() < deadline and proc.poll() is None, "no socket"
            time.sleep(0.05)
        for _ in range(2):
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(10)
                c.connect(str(sock))
                assert c.recv(10) == b""  # closed: nothing to join it to
        assert proc.poll() is None  # still listening
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"domain 5: no vchan at {path}" in err, err
