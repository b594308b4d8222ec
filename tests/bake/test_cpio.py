"""The newc writer against GNU cpio and an independent header parser; compression round-trips."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from uniklab.bake.cpio import (
    DEFAULT_COMPRESSION,
    CpioArchive,
    compress,
    decompress,
    members,
    read_file,
)
from uniklab.errors import BakeError

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
needs_lz4 = pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 not installed")

LZ4_LEGACY_MAGIC = bytes.fromhex("02214c18")  # 0x184C2102, little-endian


def parse_newc(data: bytes) -> list[dict[str, object]]:
    """A minimal newc reader written from the spec, independent of the writer."""
    out: list[dict[str, object]] = []
    pos = 0
    names = "ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor"
    names += " namesize check"
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = {
            n: int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16)
            for i, n in enumerate(names.split())
        }
        pos += 110
        name = data[pos : pos + fields["namesize"] - 1].decode()
        assert data[pos + fields["namesize"] - 1] == 0
        pos += fields["namesize"]
        pos += -pos % 4
        body = data[pos : pos + fields["filesize"]]
        pos += fields["filesize"]
        pos += -pos % 4
        out.append({**fields, "name": name, "data": body})
        if name == "TRAILER!!!":
            assert pos == len(data), "bytes after the trailer"
            return out


def sample(tmp_path: Path) -> CpioArchive:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o700)
    link = tmp_path / "link-to-script"
    link.symlink_to(script)
    a = CpioArchive()
    a.add_file("/etc/hostname", b"uniklab\n")
    a.add_file_from("/bin/hello", link)  # follows the symlink, keeps the exec bit
    a.add_symlink("/bin/sh", "hello")
    a.add_dir("/tmp", 0o1777)
    a.add_device("/dev/console", "c", 5, 1)
    a.add_file("odd/size", b"12345")  # relative paths are image-absolute too
    return a


EXPECTED_NAMES = [
    "bin",
    "bin/hello",
    "bin/sh",
    "dev",
    "dev/console",
    "etc",
    "etc/hostname",
    "odd",
    "odd/size",
    "tmp",
]


def test_golden_single_file() -> None:
    a = CpioArchive()
    a.add_file("/a", b"xyz", 0o644)
    expected = (
        b"070701"
        + b"00000001"  # ino
        + b"000081A4"  # regular file, 0644
        + b"00000000" * 2  # uid, gid
        + b"00000001"  # nlink
        + b"00000000"  # mtime
        + b"00000003"  # filesize
        + b"00000000" * 4  # dev, rdev
        + b"00000002"  # namesize incl. NUL
        + b"00000000"  # check
        + b"a\0"  # 110 + 2 = 112: already aligned
        + b"xyz\0"
        + b"070701"
        + b"00000000" * 4
        + b"00000001"
        + b"00000000" * 6
        + b"0000000B"
        + b"00000000"
        + b"TRAILER!!!\0"
        + b"\0" * 3  # 110 + 11 = 121 -> 124
    )
    assert a.to_bytes() == expected


def test_entries_sorted_parents_first_with_fixed_metadata(tmp_path: Path) -> None:
    records = parse_newc(sample(tmp_path).to_bytes())
    assert [r["name"] for r in records[:-1]] == EXPECTED_NAMES
    assert [r["ino"] for r in records[:-1]] == list(range(1, len(EXPECTED_NAMES) + 1))
    for r in records:
        assert (r["uid"], r["gid"], r["mtime"]) == (0, 0, 0)
    by = {r["name"]: r for r in records}
    assert by["bin/hello"]["mode"] == stat.S_IFREG | 0o755
    assert by["bin/hello"]["data"] == b"#!/bin/sh\necho hi\n"
    assert by["etc/hostname"]["mode"] == stat.S_IFREG | 0o644
    assert by["bin/sh"]["mode"] == stat.S_IFLNK | 0o777 and by["bin/sh"]["data"] == b"hello"
    assert by["tmp"]["mode"] == stat.S_IFDIR | 0o1777
    assert by["bin"]["mode"] == stat.S_IFDIR | 0o755
    dev = by["dev/console"]
    assert dev["mode"] == stat.S_IFCHR | 0o600
    assert (dev["rdevmajor"], dev["rdevminor"]) == (5, 1)


def test_output_is_deterministic_regardless_of_insertion_order(tmp_path: Path) -> None:
    a = CpioArchive()
    b = CpioArchive()
    items = [("/x/y/z", b"1"), ("/a", b"2"), ("/x/b", b"3"), ("/x/y/a", b"4")]
    for p, d in items:
        a.add_file(p, d)
    for p, d in reversed(items):
        b.add_file(p, d)
    assert a.to_bytes() == b.to_bytes()
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    first = hashlib.sha256(sample(tmp_path / "1").to_bytes()).hexdigest()
    assert hashlib.sha256(sample(tmp_path / "2").to_bytes()).hexdigest() == first


@needs_cpio
def test_gnu_cpio_lists_exactly_what_was_added(tmp_path: Path) -> None:
    data = sample(tmp_path).to_bytes()
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True, timeout=10
    ).stdout.decode()
    assert listing.splitlines() == EXPECTED_NAMES


@needs_cpio
def test_gnu_cpio_extracts_content_modes_and_links(tmp_path: Path) -> None:
    archive = sample(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    # Devices need CAP_MKNOD; extract everything else.
    proc = subprocess.run(
        ["cpio", "-idv", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
        input=archive.to_bytes(),
        cwd=out,
        capture_output=True,
        check=True,
        timeout=10,
    )
    assert sorted(proc.stderr.decode().split()) == sorted(
        n for n in EXPECTED_NAMES if n != "dev/console"
    )
    assert (out / "etc/hostname").read_bytes() == b"uniklab\n"
    assert (out / "bin/hello").stat().st_mode & 0o777 == 0o755
    assert os.readlink(out / "bin/sh") == "hello"
    assert (out / "odd/size").read_bytes() == b"12345"
    assert stat.S_IMODE((out / "tmp").stat().st_mode) == 0o1777


def test_identical_duplicates_are_fine_different_ones_are_not() -> None:
    a = CpioArchive()
    a.add_file("/etc/x", b"same")
    a.add_file("etc/x", b"same")
    a.add_dir("/etc")
    with pytest.raises(BakeError, match="/etc/x: already in the image"):
        a.add_file("/etc/x", b"other")
    with pytest.raises(BakeError, match="already in the image"):
        a.add_file("/etc/x", b"same", 0o755)
    with pytest.raises(BakeError, match="already in the image"):
        a.add_symlink("/etc/x", "y")
    with pytest.raises(BakeError, match="already in the image"):
        a.add_dir("/etc", 0o700)  # explicit twice with different modes
    with pytest.raises(BakeError, match="already in the image"):
        a.add_file("/etc", b"a file where a directory is")


def test_explicit_dir_sets_mode_of_an_implied_parent() -> None:
    a = CpioArchive()
    a.add_file("/root/.profile", b"")
    a.add_dir("/root", 0o700)
    by = {r["name"]: r for r in parse_newc(a.to_bytes())}
    assert by["root"]["mode"] == stat.S_IFDIR | 0o700


def test_parent_must_be_a_directory() -> None:
    a = CpioArchive()
    a.add_symlink("/lib64", "usr/lib64")
    with pytest.raises(BakeError, match="parent /lib64 is not a directory"):
        a.add_file("/lib64/ld.so", b"")


@pytest.mark.parametrize("bad", ["../etc/passwd", "/a/../../b", "a/..", "", "/", ".", "a\0b"])
def test_bad_paths_are_rejected(bad: str) -> None:
    with pytest.raises(BakeError):
        CpioArchive().add_file(bad, b"")


def test_paths_are_normalised() -> None:
    a = CpioArchive()
    a.add_file("//usr/./bin//x", b"")
    assert a.paths() == [
        PurePosixPath("/usr"),
        PurePosixPath("/usr/bin"),
        PurePosixPath("/usr/bin/x"),
    ]
    assert "/usr/bin/x" in a and "usr/bin" in a and len(a) == 3


def test_bad_modes_and_devices_are_rejected(tmp_path: Path) -> None:
    a = CpioArchive()
    with pytest.raises(BakeError, match="not a permission mode"):
        a.add_file("/x", b"", 0o100644)
    with pytest.raises(BakeError, match="device kind"):
        a.add_device("/dev/x", "p", 1, 1)  # type: ignore[arg-type]
    with pytest.raises(BakeError, match="cannot read"):
        a.add_file_from("/x", tmp_path / "missing")
    with pytest.raises(BakeError, match="not a regular file"):
        a.add_file_from("/x", tmp_path)


def test_add_file_from_mode_ignores_host_umask_but_honours_explicit(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"data")
    src.chmod(0o600)
    a = CpioArchive()
    a.add_file_from("/plain", src)
    a.add_file_from("/explicit", src, mode=0o4711)
    by = {r["name"]: r for r in parse_newc(a.to_bytes())}
    assert by["plain"]["mode"] == stat.S_IFREG | 0o644
    assert by["explicit"]["mode"] == stat.S_IFREG | 0o4711


def test_write_returns_size_and_matches_to_bytes(tmp_path: Path) -> None:
    archive = sample(tmp_path)
    target = tmp_path / "initramfs.cpio"
    with target.open("wb") as f:
        n = archive.write(f)
    assert target.read_bytes() == archive.to_bytes()
    assert n == target.stat().st_size and n % 4 == 0


PAYLOAD = b"".join(b"line %d of a compressible payload\n" % i for i in range(20000))


def test_gzip_round_trips_and_is_deterministic() -> None:
    out = compress(PAYLOAD, "gzip")
    assert out[:2] == b"\x1f\x8b" and len(out) < len(PAYLOAD) // 4
    assert gzip.decompress(out) == PAYLOAD
    assert compress(PAYLOAD, "gzip") == out
    assert gzip.decompress(compress(PAYLOAD, "gzip", level=1)) == PAYLOAD


@needs_lz4
def test_lz4_is_the_legacy_frame_and_round_trips(tmp_path: Path) -> None:
    out = compress(PAYLOAD, "lz4")
    assert out[:4] == LZ4_LEGACY_MAGIC
    packed = tmp_path / "p.lz4"
    packed.write_bytes(out)
    subprocess.run(["lz4", "-d", "-f", "-q", str(packed), str(tmp_path / "p")], check=True)
    assert (tmp_path / "p").read_bytes() == PAYLOAD
    assert compress(PAYLOAD, "lz4") == out


def test_none_is_identity_and_default_is_a_kernel_format() -> None:
    assert compress(PAYLOAD, "none") is PAYLOAD
    assert DEFAULT_COMPRESSION in ("lz4", "gzip")
    with pytest.raises(BakeError, match="unknown compression"):
        compress(PAYLOAD, "xz")  # type: ignore[arg-type]


def test_lz4_missing_is_a_bake_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(BakeError, match="needs the lz4 command"):
        compress(PAYLOAD, "lz4")


def test_reader_finds_what_the_writer_wrote(tmp_path: Path) -> None:
    arc = sample(tmp_path)
    arc.add_file("/uniklab/image.json", b'{"modules": []}')
    data = arc.to_bytes()
    listed = [(str(p), mode) for p, mode, _ in members(data)]
    assert listed == [(r["name"], r["mode"]) for r in parse_newc(data) if r["name"] != "TRAILER!!!"]
    assert read_file(data, "/uniklab/image.json") == b'{"modules": []}'
    assert read_file(data, "uniklab/image.json") == b'{"modules": []}'
    assert read_file(data, "/no/such/file") is None
    # Only the first archive of a concatenation (the kernel reads on; pv_initrd relies on it).
    later = CpioArchive()
    later.add_file("/late", b"x")
    assert read_file(data + later.to_bytes(), "/late") is None


def test_reader_rejects_what_is_not_newc() -> None:
    with pytest.raises(BakeError, match="not a newc cpio archive"):
        read_file(b"\x00" * 200, "/x")


def test_decompress_undoes_gzip_and_passes_raw_through() -> None:
    assert decompress(compress(PAYLOAD, "gzip")) == PAYLOAD
    assert decompress(PAYLOAD) is PAYLOAD


@needs_lz4
def test_decompress_undoes_the_lz4_legacy_frame() -> None:
    assert decompress(compress(PAYLOAD, "lz4")) == PAYLOAD
