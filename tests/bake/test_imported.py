"""Bring your own image: a rumprun unikernel baked elsewhere, imported into the store.

The unit tests use tiny ELF files written here (a multiboot header for ``hw``, a
``__xen_guest`` section or a Xen note for ``xen_pv``); the e2e test bakes the runbook's
Redis with the rumprun toolchain, imports its ``hw`` kernel and data disk into another home,
runs it under QEMU and talks to it."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uniklab.bake.image import ImageStore
from uniklab.bake.imported import detect_platform, import_image
from uniklab.bake.recipe import ProbeSpec
from uniklab.cli.main import main
from uniklab.errors import NotFoundError, UsageError
from uniklab.guest.console import RUMPRUN_CALLING_RE

MULTIBOOT_MAGIC = 0x1BADB002
EM_X86_64, EM_ARM = 62, 40
SHT_PROGBITS, SHT_NOTE, SHT_STRTAB = 1, 7, 3
PT_NOTE = 4
RUMPRUN_STRINGS = b'\0rumprun_main1\0NetBSD 7.99.34 (RUMP-ROAST)\0=== calling "%s" main() ===\0'


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def make_elf(
    path: Path,
    *,
    multiboot_at: int | None = None,
    checksum_ok: bool = True,
    sections: tuple[tuple[str, int, bytes], ...] = (),
    note_segment: bytes | None = None,
    strings: bytes = RUMPRUN_STRINGS,
    machine: int = EM_X86_64,
) -> Path:
    """An ELF64 file: a multiboot header at ``multiboot_at``, ``strings`` after it, the
    ``sections`` (name, type, data) with a section name table, and a PT_NOTE segment."""
    body = bytearray(b"\0" * 0x200)
    if multiboot_at is not None:
        flags = 0x00010003
        checksum = (-(MULTIBOOT_MAGIC + flags)) & 0xFFFFFFFF
        if not checksum_ok:
            checksum ^= 1
        body.extend(b"\0" * (multiboot_at - len(body)))
        body.extend(struct.pack("<III", MULTIBOOT_MAGIC, flags, checksum))
    body.extend(strings)
    body.extend(b"\0" * (-len(body) % 8))
    phdrs: list[bytes] = []
    if note_segment is not None:
        off = len(body)
        body.extend(note_segment)
        n = len(note_segment)
        phdrs.append(struct.pack("<IIQQQQQQ", PT_NOTE, 4, off, 0, 0, n, n, 4))
    names = bytearray(b"\0")
    shdrs = [b"\0" * 64]
    all_sections = [*sections, (".shstrtab", SHT_STRTAB, b"")]
    for sname, stype, data in all_sections:
        name_off = len(names)
        names.extend(sname.encode() + b"\0")
        if sname == ".shstrtab":
            data = bytes(names)
        body.extend(b"\0" * (-len(body) % 8))
        off = len(body)
        body.extend(data)
        shdrs.append(struct.pack("<IIQQQQIIQQ", name_off, stype, 0, 0, off, len(data), 0, 0, 4, 0))
    body.extend(b"\0" * (-len(body) % 8))
    shoff = len(body)
    for h in shdrs:
        body.extend(h)
    phoff = 64 if phdrs else 0
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9,
        2,  # ET_EXEC
        machine,
        1,
        0x100000,
        phoff,
        shoff,
        0,
        64,
        56,
        len(phdrs),
        64,
        len(shdrs),
        len(shdrs) - 1,
    )
    body[: len(header)] = header
    for i, ph in enumerate(phdrs):
        body[64 + 56 * i : 64 + 56 * (i + 1)] = ph
    path.write_bytes(bytes(body))
    return path


XEN_GUEST = b"GUEST_OS=rumprun,XEN_VER=xen-3.0,VIRT_BASE=0x0,LOADER=generic\0"


@pytest.fixture
def hw(tmp_path: Path) -> Path:
    return make_elf(tmp_path / "redis-server.bin", multiboot_at=4096)


@pytest.fixture
def xen(tmp_path: Path) -> Path:
    return make_elf(
        tmp_path / "redis-xen.bin", sections=(("__xen_guest", SHT_PROGBITS, XEN_GUEST),)
    )


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "data.iso"
    path.write_bytes(b"CD001" + b"\0" * 4091)
    return path


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "home" / "images")


def _left(store: ImageStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir())


# ---------------------------------------------------------------- detection


def test_a_multiboot_header_is_hw_for_qemu(hw: Path, tmp_path: Path) -> None:
    assert detect_platform(hw) == "qemu"
    # Anywhere 4-byte aligned in the first 8192 bytes (the multiboot spec's rule).
    assert detect_platform(make_elf(tmp_path / "end", multiboot_at=8192 - 12)) == "qemu"


@pytest.mark.parametrize(
    "where, checksum_ok",
    [(8192, True), (4098, True), (4096, False)],
    ids=["past 8192 bytes", "unaligned", "bad checksum"],
)
def test_no_valid_multiboot_header_is_no_platform(
    tmp_path: Path, where: int, checksum_ok: bool
) -> None:
    path = make_elf(tmp_path / "k", multiboot_at=where, checksum_ok=checksum_ok)
    with pytest.raises(UsageError, match=r"neither hw .* nor xen_pv"):
        detect_platform(path)


def test_a_xen_guest_section_is_xen_pv(xen: Path) -> None:
    assert detect_platform(xen) == "xen"


def test_a_xen_elf_note_is_xen_pv_in_a_section_or_a_segment(tmp_path: Path) -> None:
    note = _note(b"Xen", 6, b"rumprun\0")  # XEN_ELFNOTE_GUEST_OS
    section = make_elf(tmp_path / "s", sections=((".note.Xen", SHT_NOTE, note),))
    segment = make_elf(tmp_path / "p", note_segment=note)
    assert detect_platform(section) == "xen"
    assert detect_platform(segment) == "xen"
    # Another owner's note (rumprun's own bake recipe note, GNU's build id) is not Xen's.
    other = _note(b"rumpkernel.org", 0x1, b"rumprun_tuple\0")
    with pytest.raises(UsageError, match="neither"):
        detect_platform(make_elf(tmp_path / "o", sections=((".note.rumprun", SHT_NOTE, other),)))


def test_both_signatures_need_a_platform_named(tmp_path: Path, store: ImageStore) -> None:
    both = make_elf(
        tmp_path / "both", multiboot_at=4096, sections=(("__xen_guest", SHT_PROGBITS, XEN_GUEST),)
    )
    with pytest.raises(UsageError, match="both a hw and a xen_pv"):
        detect_platform(both)
    assert import_image(store, both, name="both", platform="xen").platforms == ["xen"]


@pytest.mark.parametrize(
    "strings, message",
    [
        (b"\0NetBSD\0", "no rumprun in it"),
        (b"\0rumprun\0", "no NetBSD in it"),
        (b"\0linux\0", "no rumprun or NetBSD"),
    ],
)
def test_an_elf_without_rumprun_in_it_is_refused(
    tmp_path: Path, strings: bytes, message: str
) -> None:
    path = make_elf(tmp_path / "k", multiboot_at=4096, strings=strings)
    with pytest.raises(UsageError, match=message):
        detect_platform(path)


def test_other_files_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"'/bin/true' is not a rumprun unikernel") as exc:
        detect_platform("/bin/true")
    assert "\n" not in str(exc.value)
    text = tmp_path / "notes.txt"
    text.write_text("rumprun NetBSD\n")
    with pytest.raises(UsageError, match="not an ELF file"):
        detect_platform(text)
    (tmp_path / "empty").touch()
    with pytest.raises(UsageError, match="is empty"):
        detect_platform(tmp_path / "empty")
    with pytest.raises(UsageError, match="not a regular file"):
        detect_platform(tmp_path)
    with pytest.raises(NotFoundError, match="no file"):
        detect_platform(tmp_path / "missing")
    arm = make_elf(tmp_path / "arm", multiboot_at=4096, machine=EM_ARM)
    with pytest.raises(UsageError, match="for EM_ARM, not x86"):
        detect_platform(arm)
    broken = make_elf(tmp_path / "broken", multiboot_at=4096)
    data = bytearray(broken.read_bytes())
    data[0x28:0x30] = struct.pack("<Q", 2**40)  # e_shoff far past the end
    broken.write_bytes(bytes(data))
    with pytest.raises(UsageError):
        detect_platform(broken)


# ---------------------------------------------------------------- import


def test_import_hw_writes_a_rumprun_image(hw: Path, disk: Path, store: ImageStore) -> None:
    m = import_image(
        store,
        hw,
        name="myredis",
        tag="v1",
        args=["/data/conf/redis.conf"],
        ports=[6379],
        disks=[(disk, "/data")],
    )
    assert (m.name, m.tag, m.kind) == ("myredis", "v1", "rumprun")
    assert m.platforms == ["qemu"] and m.kernels == {"qemu": "kernel-qemu"}
    assert m.kernel.release == "rumprun (imported)" and m.kernel.choice == "rumprun"
    assert m.kernel.source == str(hw) and m.kernel.file == "kernel-qemu"
    assert (m.initrd, m.compression, m.cmdline, m.acpi) == ("", "none", "", False)
    assert m.entrypoint == ["redis-server", "/data/conf/redis.conf"]
    assert m.ports == [6379] and m.memory == "64M"
    assert m.probe == ProbeSpec(kind="tcp", port=6379)
    [d] = m.disks
    assert (d.file, d.mount, d.size) == ("disk-data.iso", "/data", 4096)
    assert m.kernel_size == hw.stat().st_size and m.initrd_size == 4096
    assert m.size == m.kernel_size + 4096 and m.files == 1
    assert m.digest.startswith("sha256:") and store.has(m.digest)
    assert store.kernel_path(m, "qemu").read_bytes() == hw.read_bytes()
    assert store.disk_paths(m)[0].read_bytes() == disk.read_bytes()
    assert store.manifest(m.digest) == m
    assert _left(store) == [m.digest.replace(":", "-")]  # no staging left


def test_import_xen_without_ports_waits_for_rumprun_on_the_console(
    xen: Path, store: ImageStore
) -> None:
    m = import_image(store, xen, name="x", argv0="redis-server", memory="32M")
    assert m.platforms == ["xen"] and m.kernels == {"xen": "kernel-xen"}
    assert m.probe == ProbeSpec(kind="console", marker=RUMPRUN_CALLING_RE.pattern)
    assert m.entrypoint == ["redis-server"] and m.memory == "32M" and m.disks == []
    assert store.kernel_path(m, "xen").read_bytes() == xen.read_bytes()


def test_importing_twice_gives_the_same_digest_and_reuses_the_image(
    hw: Path, tmp_path: Path, store: ImageStore
) -> None:
    a = import_image(store, hw, name="a", ports=[80])
    elsewhere = tmp_path / "copy" / hw.name
    elsewhere.parent.mkdir()
    shutil.copy(hw, elsewhere)
    b = import_image(store, elsewhere, name="b", tag="t", ports=[80])
    assert b.digest == a.digest and (b.name, b.tag) == ("b", "t")
    assert b.created == a.created  # the stored image, not a new one
    assert _left(store) == [a.digest.replace(":", "-")]
    # Other options or other bytes: another image.
    assert import_image(store, hw, name="a", ports=[81]).digest != a.digest
    assert import_image(store, hw, name="a", ports=[80], args=["-v"]).digest != a.digest
    with open(elsewhere, "ab") as fh:
        fh.write(b"\0")
    assert import_image(store, elsewhere, name="a", ports=[80]).digest != a.digest


def test_a_given_probe_is_completed(hw: Path, store: ImageStore) -> None:
    m = import_image(store, hw, name="a", ports=[6379], probe=ProbeSpec(kind="redis"))
    assert m.probe == ProbeSpec(kind="redis", port=6379)
    m = import_image(store, hw, name="a", probe=ProbeSpec(kind="console"))
    assert m.probe.marker == RUMPRUN_CALLING_RE.pattern
    with pytest.raises(UsageError, match="needs a port"):
        import_image(store, hw, name="a", probe=ProbeSpec(kind="tcp"))
    with pytest.raises(UsageError, match="not one of ports"):
        import_image(store, hw, name="a", ports=[1], probe=ProbeSpec(kind="tcp", port=2))


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"name": "Bad Name"}, UsageError, "invalid image name"),
        ({"tag": "a:b"}, UsageError, "invalid image tag"),
        ({"platform": "xen"}, UsageError, r"not a xen_pv kernel for xen \(it is hw_virtio\)"),
        ({"platform": "kvm"}, UsageError, "invalid platform 'kvm'"),
        ({"ports": [0]}, UsageError, "invalid port"),
        ({"ports": [80, 80]}, UsageError, "port 80 listed twice"),
        ({"memory": "8M"}, UsageError, "out of range"),
        ({"args": ["it's"]}, UsageError, "single quote"),
        ({"args": ["a\0b"]}, UsageError, "NUL"),
        ({"argv0": ""}, UsageError, "argv0, the program's name, cannot be empty"),
        ({"disks": [("missing.iso", "/data")]}, NotFoundError, "no disk"),
        ({"disks": [("DISK", "data")]}, UsageError, "invalid mount point 'data'"),
        ({"disks": [("DISK", "/")]}, UsageError, "invalid mount point"),
        ({"disks": [("DISK", "/a b")]}, UsageError, "invalid mount point"),
        ({"disks": [("DISK", "/../x")]}, UsageError, "invalid mount point"),
        ({"disks": [("DISK", "/d"), ("DISK", "/d/")]}, UsageError, "two disks are mounted at /d"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    hw: Path,
    disk: Path,
    store: ImageStore,
    kwargs: dict[str, object],
    exc: type[Exception],
    message: str,
) -> None:
    disks = kwargs.pop("disks", [])
    assert isinstance(disks, list)
    kwargs["disks"] = [(disk if f == "DISK" else f, m) for f, m in disks]
    with pytest.raises(exc, match=message):
        import_image(store, hw, **{"name": "ok", **kwargs})  # type: ignore[arg-type]
    assert _left(store) == []


def test_two_disks_with_one_file_name_both_go_in(
    hw: Path, disk: Path, tmp_path: Path, store: ImageStore
) -> None:
    other = tmp_path / "other" / "data.iso"
    other.parent.mkdir()
    other.write_bytes(b"x" * 2048)
    m = import_image(store, hw, name="a", disks=[(disk, "/data"), (other, "/more")])
    assert [(d.file, d.mount, d.size) for d in m.disks] == [
        ("disk-data.iso", "/data", 4096),
        ("disk1-data.iso", "/more", 2048),
    ]


def test_a_failed_copy_leaves_no_staging(
    hw: Path, store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uniklab.bake import imported
    from uniklab.errors import BakeError

    def broken(src: Path, dest: Path) -> str:
        dest.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imported, "_copy", broken)
    with pytest.raises(BakeError, match="No space left on device"):
        import_image(store, hw, name="a")
    assert _left(store) == []


# ---------------------------------------------------------------- the CLI


def test_cli_import_then_images_lists_it(
    home: Path, hw: Path, disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["images"]) == 0
    assert capsys.readouterr().out.split() == ["NAME", "TAG", "DIGEST", "KIND", "SIZE", "CREATED"]
    assert main(["images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    argv = ["images", "import", str(hw), "--port", "6379", "--arg", "/data/conf/redis.conf"]
    assert main([*argv, "--disk", f"{disk}:/data", "--name", "byo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("byo:latest ") and "imported for qemu: unikernel" in out
    assert "+ data disk 4.0KB" in out
    assert main(["images", "import", str(hw), "--tag", "x", "--platform", "qemu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "redis-server" and doc["tag"] == "x"  # the name: the file's stem
    assert doc["probe"]["kind"] == "console" and doc["entrypoint"] == ["redis-server"]

    assert main(["images"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("byo", "latest", "rumprun"),
        ("redis-server", "x", "rumprun"),
    ]
    assert main(["images", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["kind"], m["platforms"]) for m in listed] == [
        ("byo", "rumprun", ["qemu"]),
        ("redis-server", "rumprun", ["qemu"]),
    ]
    assert listed[0]["entrypoint"] == ["redis-server", "/data/conf/redis.conf"]
    assert listed[0]["disks"][0]["mount"] == "/data"


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["/bin/true"], 2, "error: '/bin/true' is not a rumprun unikernel"),
        (["MISSING"], 3, "error: no file "),
        (["HW", "--platform", "xen"], 2, "is not a xen_pv kernel for xen"),
        (["HW", "--platform", "kvm"], 2, "error: Invalid value for '--platform'"),
        (["HW", "--port", "http"], 2, "error: invalid port 'http'"),
        (["HW", "--disk", "data.iso"], 2, "error: invalid --disk 'data.iso'"),
        (["HW", "--disk", "MISSING:/data"], 3, "error: no disk "),
        (["HW", "--name", "A;B"], 2, "error: invalid image name"),
        (["HW", "--memory", "lots"], 2, "error: invalid memory size 'lots'"),
        (["HW", "--arg", "a\nb"], 2, "control character"),
        ([], 2, "error: Missing argument 'FILE'"),
    ],
)
def test_cli_bad_input_is_one_line_and_leaves_nothing(
    home: Path,
    hw: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    argv = [a.replace("HW", str(hw)).replace("MISSING", str(tmp_path / "missing")) for a in argv]
    capsys.readouterr()
    assert main(["images", "import", *argv]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    images = home / "images"
    assert not images.exists() or list(images.iterdir()) == []
    assert main(["images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# ---------------------------------------------------------------- e2e: a real rumprun-bake output


@pytest.fixture
def two_homes() -> Iterator[tuple[Path, Path]]:
    from tests.support.leaks import qemu_processes

    homes = tuple(Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in ("ukb-", "uki-"))
    yield homes  # type: ignore[misc]
    for h in homes:
        for line in qemu_processes(str(h)):
            os.kill(int(line.split()[0]), 9)
        shutil.rmtree(h, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.timeout(45 * 60)
def test_a_rumprun_bake_output_imported_runs_redis(two_homes: tuple[Path, Path]) -> None:
    import redis

    from tests.support.leaks import assert_nothing_left
    from uniklab.lab import Lab, RunOptions
    from uniklab.paths import Paths

    baked_home, home = two_homes
    baker = Lab(Paths(baked_home))
    try:
        baked = baker.bake("rumprun-redis").manifest
        hw_kernel = baker.images.kernel_path(baked, "qemu")
        xen_kernel = baker.images.kernel_path(baked, "xen")
        [iso] = baker.images.disk_paths(baked)
    finally:
        baker.close()
    assert detect_platform(hw_kernel) == "qemu" and detect_platform(xen_kernel) == "xen"

    lab = Lab(Paths(home))
    try:
        m = import_image(lab.images, hw_kernel, name="byo", disks=[(iso, "/data")])
        lab.store.put_image(m.name, m.tag, m.digest)
        assert m.entrypoint == ["kernel-qemu"] and m.probe.kind == "console"
        opts = RunOptions(name="byo", publish=[(0, 6379)], args=("/data/conf/redis.conf",))
        view = lab.run("byo", opts)
        assert view.state == "running"
        port = lab.ip("byo").ports[0][0]
        client = redis.Redis("127.0.0.1", port, socket_timeout=10, protocol=2)
        deadline = time.monotonic() + 120
        while True:  # ready on the console marker: redis may take a moment to listen
            try:
                assert client.ping() is True
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert client.set("byo", "imported") and client.get("byo") == b"imported"
        assert client.info()["redis_version"] == "3.0.6"
        # rumprun names the program by its argv[0]: the imported file's stem.
        assert '=== calling "kernel-qemu" main() ===' in lab.logs("byo")
        lab.destroy("byo")
        assert_nothing_left(home)
        # `uniklab run ./kernel-qemu`: the file itself, imported under a tag of its own;
        # ready when the published port answers.
        opts = RunOptions(
            name="file",
            publish=[(0, 6379)],
            disks=[(str(iso), "/data")],
            args=("/data/conf/redis.conf",),
        )
        view = lab.run(str(hw_kernel), opts)
        assert view.row.image.startswith("kernel-qemu:file-")
        client = redis.Redis("127.0.0.1", lab.ip("file").ports[0][0], socket_timeout=10, protocol=2)
        assert client.ping() is True
        lab.destroy("file")
        assert_nothing_left(home)
    finally:
        for row in lab.store.instances():
            lab.destroy(row.name)
        lab.close()
