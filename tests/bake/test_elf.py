"""ELF closure against ldd and ld.so itself, on host binaries and small gcc-built fixtures."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from uniklab.bake.elf import elf_closure, elf_info
from uniklab.errors import BakeError

REDIS = Path("/usr/bin/redis-check-rdb")
LS = Path("/bin/ls")
INTERP = PurePosixPath("/lib64/ld-linux-x86-64.so.2")



def _ld_platform() -> str:
    """What this machine's ld.so expands $PLATFORM to: the CPU's name ("haswell") where
    glibc has one, else the kernel's ("x86_64").  Never spelled in the test: it differs
    between machines."""
    out = subprocess.run(
        [str(INTERP), "--list-diagnostics"], capture_output=True, text=True, timeout=20
    ).stdout
    m = re.search(r'^dl_platform="([^"]+)"', out, re.M)
    return m[1] if m else "x86_64"


PLATFORM = _ld_platform()

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_redis = pytest.mark.skipif(not REDIS.is_file(), reason="redis-check-rdb not installed")


def ldd(binary: Path) -> dict[str, Path]:
    """The oracle: ldd's view of a binary, as {DT_NEEDED name or interpreter path: real file}."""
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=20
    ).stdout
    deps: dict[str, Path] = {}
    for line in out.splitlines():
        line = line.strip()
        if m := re.match(r"(\S+) => (/\S+) \(0x", line):
            deps[m[1]] = Path(m[2]).resolve()
        elif m := re.match(r"(/\S+) \(0x", line):
            deps[m[1]] = Path(m[1]).resolve()
    return deps


@pytest.mark.parametrize("binary", [pytest.param(REDIS, marks=needs_redis), LS])
def test_closure_matches_ldd(binary: Path) -> None:
    closure = elf_closure([binary])
    expected = ldd(binary)
    assert expected, "ldd found nothing: the oracle is broken"
    got = {(str(p) if p == INTERP else p.name): src for p, src in closure.items()}
    assert got == expected
    for image, src in closure.items():
        assert image.is_absolute() and src.is_file() and not src.is_symlink()
    assert all(str(p) != str(binary) for p in closure), "the binary itself is not included"


@needs_redis
def test_redis_closure_layout() -> None:
    closure = elf_closure([REDIS])
    assert closure[INTERP] == Path(os.path.realpath(INTERP))
    libc = PurePosixPath("/lib/x86_64-linux-gnu/libc.so.6")
    assert closure[libc] == Path(os.path.realpath(libc))
    # libc needs ld-linux-x86-64.so.2 too: ld.so is already loaded, so no second copy.
    assert [p for p in closure if p.name == INTERP.name] == [INTERP]


@needs_redis
def test_elf_info_of_redis() -> None:
    info = elf_info(REDIS)
    assert info.is_elf and info.elf_class == 64 and info.machine == "EM_X86_64"
    assert info.interp == str(INTERP)
    assert "libc.so.6" in info.needed and "libjemalloc.so.2" in info.needed
    assert not info.is_static and info.rpath == () and info.runpath == ()


def test_elf_info_non_elf_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "script.sh"
    text.write_text("#!/bin/sh\n")
    assert elf_info(text).is_elf is False
    with pytest.raises(BakeError, match="no such file"):
        elf_info(tmp_path / "missing")
    with pytest.raises(BakeError, match="not an ELF"):
        elf_closure([text])


def test_extra_libs_real(tmp_path: Path) -> None:
    libz = PurePosixPath("/lib/x86_64-linux-gnu/libz.so.1")
    if not Path(libz).exists():
        pytest.skip("libz.so.1 not on this host")
    closure = elf_closure([LS], extra_libs=["libz.so.1"])
    assert closure[libz] == Path(os.path.realpath(libz))
    assert set(elf_closure([LS])) < set(closure)


# --- gcc-built fixtures ---------------------------------------------------------------------

B_C = "int b(void) { return 2; }\n"
A_C = "int b(void);\nint a(void) { return b() + 1; }\n"
PLUG_C = "int b(void);\nint plug(void) { return b(); }\n"
SOLO_C = "int solo(void) { return 4; }\n"
PLAT_C = "int plat(void) { return 5; }\n"
MAIN_A = "int a(void);\nint main(void) { return a() == 3 ? 0 : 1; }\n"
MAIN_DST = (
    "int solo(void); int plat(void);\nint main(void) { return solo() + plat() == 9 ? 0 : 1; }\n"
)
GONE_C = "int gone(void) { return 0; }\n"
MAIN_GONE = "int gone(void);\nint main(void) { return gone(); }\n"


@dataclass(frozen=True)
class Fixtures:
    root: Path
    app_rpath: Path  # RPATH $ORIGIN/../libdirA:$ORIGIN/../libdirB; liba needs libb
    app_runpath: Path  # the same as RUNPATH: not inherited, so libb is not found
    app_skip32: Path  # RPATH with a 32-bit libb.so first
    app_dst: Path  # RUNPATH with $LIB and $PLATFORM
    app_gone: Path  # needs libgone.so, which was deleted
    app_static: Path
    fake32: Path


def gcc(*args: str | Path) -> None:
    subprocess.run(["gcc", *map(str, args)], check=True, capture_output=True, timeout=60)


def elf32_i386_header() -> bytes:
    ident = b"\x7fELF" + bytes([1, 1, 1]) + b"\0" * 9
    header = ident + struct.pack("<HHIIIIIHHHHHH", 3, 3, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0)
    return header.ljust(4096, b"\0")  # ld.so rejects short files outright, and stops there


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("elf")
    for name, text in [
        ("b.c", B_C),
        ("a.c", A_C),
        ("plug.c", PLUG_C),
        ("solo.c", SOLO_C),
        ("plat.c", PLAT_C),
        ("main_a.c", MAIN_A),
        ("main_dst.c", MAIN_DST),
        ("gone.c", GONE_C),
        ("main_gone.c", MAIN_GONE),
    ]:
        (d / name).write_text(text)
    for sub in ("bin", "libdirA", "libdirB", "libdir32", "gone", "lib/x86_64-linux-gnu"):
        (d / sub).mkdir(parents=True)
    (d / "p" / PLATFORM).mkdir(parents=True)
    gcc("-shared", "-fPIC", "-o", d / "libdirB/libb.so", d / "b.c")
    gcc("-shared", "-fPIC", "-o", d / "libdirA/liba.so", d / "a.c", f"-L{d}/libdirB", "-lb")
    gcc("-shared", "-fPIC", "-o", d / "libdirA/libplug.so", d / "plug.c", f"-L{d}/libdirB", "-lb")
    gcc("-shared", "-fPIC", "-o", d / "lib/x86_64-linux-gnu/libsolo.so", d / "solo.c")
    gcc("-shared", "-fPIC", "-o", d / "p" / PLATFORM / "libplat.so", d / "plat.c")
    gcc("-shared", "-fPIC", "-o", d / "gone/libgone.so", d / "gone.c")
    link_a: list[str | Path] = [d / "main_a.c", f"-L{d}/libdirA", f"-L{d}/libdirB", "-la"]
    rp = "$ORIGIN/../libdirA:$ORIGIN/../libdirB"
    gcc("-o", d / "bin/app_rpath", *link_a, f"-Wl,-rpath,{rp}", "-Wl,--disable-new-dtags")
    gcc("-o", d / "bin/app_runpath", *link_a, f"-Wl,-rpath,{rp}", "-Wl,--enable-new-dtags")
    rp32 = "$ORIGIN/../libdir32:" + rp
    gcc("-o", d / "bin/app_skip32", *link_a, f"-Wl,-rpath,{rp32}", "-Wl,--disable-new-dtags")
    gcc(
        "-o",
        d / "bin/app_dst",
        d / "main_dst.c",
        f"-L{d}/lib/x86_64-linux-gnu",
        f"-L{d}/p/{PLATFORM}",
        "-lsolo",
        "-lplat",
        "-Wl,-rpath,$ORIGIN/../$LIB:$ORIGIN/../p/$PLATFORM",
        "-Wl,--enable-new-dtags",
    )
    gcc("-o", d / "bin/app_gone", d / "main_gone.c", f"-L{d}/gone", "-lgone")
    (d / "gone/libgone.so").unlink()
    fake32 = d / "libdir32/libb.so"
    fake32.write_bytes(elf32_i386_header())
    static = d / "bin/app_static"
    try:
        gcc("-static", "-o", static, d / "b.c", "-nostartfiles", "-e", "b")
    except subprocess.CalledProcessError:
        static = Path("/nonexistent")
    return Fixtures(
        root=d,
        app_rpath=d / "bin/app_rpath",
        app_runpath=d / "bin/app_runpath",
        app_skip32=d / "bin/app_skip32",
        app_dst=d / "bin/app_dst",
        app_gone=d / "bin/app_gone",
        app_static=static,
        fake32=fake32,
    )


def runs(binary: Path) -> bool:
    """The other oracle: does ld.so itself manage to load the binary?"""
    proc = subprocess.run([str(binary)], capture_output=True, timeout=10, env={"PATH": "/usr/bin"})
    return proc.returncode == 0


def image(p: Path) -> PurePosixPath:
    return PurePosixPath(p)


def test_rpath_is_inherited_by_libraries(fx: Fixtures) -> None:
    assert runs(fx.app_rpath)
    closure = elf_closure([fx.app_rpath])
    assert closure[image(fx.root / "libdirA/liba.so")] == fx.root / "libdirA/liba.so"
    assert closure[image(fx.root / "libdirB/libb.so")] == fx.root / "libdirB/libb.so"
    assert INTERP in closure
    assert PurePosixPath("/lib/x86_64-linux-gnu/libc.so.6") in closure
    assert elf_info(fx.app_rpath).rpath == ("$ORIGIN/../libdirA", "$ORIGIN/../libdirB")


def test_runpath_is_not_inherited(fx: Fixtures) -> None:
    assert not runs(fx.app_runpath)
    info = elf_info(fx.app_runpath)
    assert info.runpath and not info.rpath
    with pytest.raises(BakeError, match=r"library libb\.so not found \(needed by .*/liba\.so\)"):
        elf_closure([fx.app_runpath])


def test_incompatible_candidates_are_skipped(fx: Fixtures) -> None:
    assert runs(fx.app_skip32)
    closure = elf_closure([fx.app_skip32])
    assert closure[image(fx.root / "libdirB/libb.so")] == fx.root / "libdirB/libb.so"
    assert image(fx.fake32) not in closure


def test_arch_mismatch_between_binaries(fx: Fixtures) -> None:
    info = elf_info(fx.fake32)
    assert (info.elf_class, info.machine) == (32, "EM_386")
    with pytest.raises(BakeError, match="arch mismatch"):
        elf_closure([fx.app_rpath, fx.fake32])


def test_arch_mismatch_of_an_absolute_extra_lib(fx: Fixtures) -> None:
    with pytest.raises(BakeError, match="arch mismatch"):
        elf_closure([fx.app_rpath], extra_libs=[str(fx.fake32)])


def test_dst_lib_and_platform(fx: Fixtures) -> None:
    assert runs(fx.app_dst)
    closure = elf_closure([fx.app_dst])
    solo = fx.root / "lib/x86_64-linux-gnu/libsolo.so"
    plat = fx.root / "p" / PLATFORM / "libplat.so"
    assert closure[image(solo)] == solo
    assert closure[image(plat)] == plat


def test_missing_library_names_who_needed_it(fx: Fixtures) -> None:
    assert not runs(fx.app_gone)
    with pytest.raises(BakeError, match=r"library libgone\.so not found \(needed by .*app_gone\)"):
        elf_closure([fx.app_gone])


def test_extra_libs_by_name_and_path(fx: Fixtures) -> None:
    plug = fx.root / "libdirA/libplug.so"
    by_name = elf_closure([fx.app_rpath], extra_libs=["libplug.so"])
    by_path = elf_closure([fx.app_rpath], extra_libs=[str(plug)])
    assert by_name[image(plug)] == plug
    assert by_name == by_path
    with pytest.raises(BakeError, match=r"libnope\.so not found"):
        elf_closure([fx.app_rpath], extra_libs=["libnope.so"])


def test_static_binary(fx: Fixtures) -> None:
    if not fx.app_static.exists():
        pytest.skip("no static libc")
    info = elf_info(fx.app_static)
    assert info.is_static and info.interp is None and info.needed == ()
    assert elf_closure([fx.app_static]) == {}


def test_sysroot_with_ld_so_conf_and_absolute_symlinks(fx: Fixtures, tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    multiarch = root / "lib/x86_64-linux-gnu"
    usr_multiarch = root / "usr/lib/x86_64-linux-gnu"
    for dir_ in (root / "usr/bin", root / "opt/alib", root / "etc/ld.so.conf.d", root / "lib64"):
        dir_.mkdir(parents=True)
    multiarch.mkdir(parents=True)
    usr_multiarch.mkdir(parents=True)
    app = root / "usr/bin/app"
    libs = [f"-L{fx.root}/libdirA", f"-Wl,-rpath-link,{fx.root}/libdirB", "-la"]
    gcc("-o", app, fx.root / "main_a.c", *libs)
    shutil.copy(fx.root / "libdirA/liba.so", root / "opt/alib/liba.so")
    shutil.copy(fx.root / "libdirB/libb.so", usr_multiarch / "libb.so.1.0")
    # Absolute symlinks must be followed inside the sysroot, not on the host.
    (usr_multiarch / "libb.so").symlink_to("/usr/lib/x86_64-linux-gnu/libb.so.1.0")
    shutil.copy(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"), multiarch / "libc.so.6")
    shutil.copy(os.path.realpath(INTERP), multiarch / "ld-linux-x86-64.so.2")
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "etc/ld.so.conf").write_text("# comment\ninclude ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/alib.conf").write_text("/opt/alib\n")
    assert not Path("/opt/alib").exists()

    closure = elf_closure([app], root=root)
    assert closure == {
        INTERP: multiarch / "ld-linux-x86-64.so.2",
        PurePosixPath("/opt/alib/liba.so"): root / "opt/alib/liba.so",
        PurePosixPath("/usr/lib/x86_64-linux-gnu/libb.so"): usr_multiarch / "libb.so.1.0",
        PurePosixPath("/lib/x86_64-linux-gnu/libc.so.6"): multiarch / "libc.so.6",
    }
    (root / "etc/ld.so.conf.d/alib.conf").unlink()
    with pytest.raises(BakeError, match=r"liba\.so not found"):
        elf_closure([app], root=root)


@pytest.mark.root
@needs_redis
@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_closure_is_enough_to_run_in_a_chroot(tmp_path: Path) -> None:
    for image_path, src in elf_closure([REDIS]).items():
        dest = tmp_path / image_path.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    (tmp_path / "bin").mkdir()
    shutil.copy(REDIS, tmp_path / "bin/redis-server")
    proc = subprocess.run(
        ["chroot", str(tmp_path), "/bin/redis-server", "--version"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Redis server v=")
