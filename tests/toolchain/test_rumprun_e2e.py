"""End to end: build the rumprun toolchain from the pinned sources (once per machine: the
cache is machine-wide, so only the first run pays minutes), compile a C program with it,
bake it for hw_virtio (a multiboot image) and boot it under QEMU; the same for xen_pv.

The program calls setjmp: NetBSD's amd64 setjmp calls rumprun's C sigprocmask with the
stack misaligned unless the project's patch is applied, and GCC 12 code then faults on an
aligned SSE store ("FATAL TRAP: general protection")."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.toolchain.conftest import shared_sources
from uniklab.toolchain import rumprun as rr

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(45 * 60)]

HELLO = r"""
#include <setjmp.h>
#include <stdio.h>

static jmp_buf env;
static sigjmp_buf senv;

int main(void) {
    volatile double x = 1.5;
    if (setjmp(env) == 0) longjmp(env, 1);
    if (sigsetjmp(senv, 1) == 0) siglongjmp(senv, 1);
    printf("uniklab: setjmp ok %.2f\n", x);
    printf("uniklab: hello from rumprun\n");
    return 0;
}
"""
MULTIBOOT_MAGIC = 0x1BADB002


def _baked(tc: rr.Toolchain, target: str, tmp_path: Path) -> Path:
    (tmp_path / "hello.c").write_text(HELLO)
    env = {"PATH": tc.env()["PATH"], "HOME": str(tmp_path)}
    subprocess.run(
        [str(tc.cc), "-O2", "-o", "hello", "hello.c"],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    subprocess.run(
        [str(tc.bake), target, "hello.bin", "hello"],
        cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return tmp_path / "hello.bin"


def _has_multiboot_header(image: Path) -> bool:
    head = image.read_bytes()[:8192]
    for off in range(0, len(head) - 12, 4):
        magic, flags, checksum = struct.unpack_from("<III", head, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return True
    return False


def test_hw_toolchain_bakes_and_boots_hello(tmp_path: Path) -> None:
    tc = rr.build("hw", source=shared_sources(), fetch=False)
    assert tc.complete and tc.launcher.is_file()
    image = _baked(tc, "hw_virtio", tmp_path)
    assert _has_multiboot_header(image)
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    console = tmp_path / "console.log"
    argv = [
        qemu, "-m", "64", "-vga", "none", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-kernel", str(image),
        "-append", '{"cmdline":"hello"}',
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            text = console.read_text(errors="replace") if console.exists() else ""
            if "hello from rumprun" in text or "FATAL TRAP" in text:
                break
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    assert "FATAL TRAP" not in text, text[-2000:]
    assert "uniklab: setjmp ok 1.50" in text and "hello from rumprun" in text, text[-2000:]


def test_xen_toolchain_bakes_hello(tmp_path: Path) -> None:
    sources = shared_sources()
    if not rr.XEN_HEADER.is_file():
        pytest.skip(f"the Xen headers are missing ({rr.XEN_HEADER}: apt-get install libxen-dev)")
    tc = rr.build("xen", source=sources, fetch=False)
    image = _baked(tc, "xen_pv", tmp_path)
    with open(image, "rb") as fh:
        elf = ELFFile(fh)
        names = {s.name for s in elf.iter_sections()}
    assert "__xen_guest" in names or ".note.Xen" in names, sorted(names)
    assert not _has_multiboot_header(image)
