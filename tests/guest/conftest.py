"""Fixtures for the guest-init tests: the init binary, a test payload, throwaway initramfs
images, a QEMU (microvm, TCG) guest that is always killed at the end, and the fuzz tests'
JSON harness (built once per session with sanitizers)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import pytest

from tests.guest.harness import JsonHarness, SanitizersUnavailable, build_harness
from uniklab.bake.kernel_choice import MODULES, host_kernel
from uniklab.errors import BakeError
from uniklab.executor import local, spawn_detached
from uniklab.guest.build import build_init
from uniklab.guest.config import GuestConfig


def _host_kernel() -> tuple[Path, Path] | None:
    """The host's newest kernel and its module tree, as the baker picks them (never a
    version spelled here: a fresh machine has another one)."""
    try:
        kernel, release = host_kernel()
    except BakeError:
        return None
    return kernel, MODULES / release


HOST_KERNEL = _host_kernel()
KERNEL, MODDIR = HOST_KERNEL or (Path("/nonexistent"), Path("/nonexistent"))
NET_MODULES = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
]
HERE = Path(__file__).parent


def _newc_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    ino = _newc_entry.ino = getattr(_newc_entry, "ino", 1000) + 1  # type: ignore[attr-defined]
    nb = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + nb
    hdr += b"\0" * (-len(hdr) % 4)
    return hdr + data + b"\0" * (-len(data) % 4)


def write_initramfs(path: Path, files: dict[str, Path | bytes]) -> None:
    """A newc archive holding `files` (archive path -> host file or bytes), plus /dev/console."""
    out = bytearray()
    dirs: set[str] = {"dev"}
    for name in files:
        parts = name.strip("/").split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for d in sorted(dirs):
        out += _newc_entry(d, stat.S_IFDIR | 0o755)
    out += _newc_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    for name, src in files.items():
        data = src if isinstance(src, bytes) else src.read_bytes()
        mode = 0o644 if isinstance(src, bytes) else (src.stat().st_mode & 0o777)
        out += _newc_entry(name.strip("/"), stat.S_IFREG | mode, data)
    out += _newc_entry("TRAILER!!!", 0)
    path.write_bytes(bytes(out))


def tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return round(float(line.split(":")[1]) * 1000)
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Guest:
    proc: Popen[bytes]
    console: Path
    port: int
    qemu_log: Path
    argv: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        while time.monotonic() < deadline:
            m = rx.search(self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                m = rx.search(self.text())
                if m:
                    return m
                break
            time.sleep(0.05)
        raise AssertionError(
            f"console never matched {pattern!r}; tail:\n{self.text()[-3000:]}\n"
            f"qemu: {self.qemu_log.read_text(errors='replace')[-1000:]}"
        )

    def wait_exit(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return rc
            time.sleep(0.05)
        raise AssertionError(f"QEMU did not exit within {timeout}s; tail:\n{self.text()[-2000:]}")

    def query_time(self, cmd: bytes = b"t", timeout: float = 5.0) -> tuple[float, int, float]:
        """(host time before, guest realtime ns, host time after) from the payload's server."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            t0 = time.time()
            s.sendall(cmd)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            t1 = time.time()
        return t0, int(data.strip() or b"0"), t1

    def tell(self, data: bytes, until: str, timeout: float = 60.0) -> None:
        """Write ``data`` to the console (a guest booted with ``console_socket``), holding
        the connection until the console matches ``until`` (QEMU drops what the UART has
        not taken when the client leaves)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(self.console.with_name("console.sock")))
            s.sendall(data)
            self.wait_for(until, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_init(tmp_path_factory.mktemp("init-cache"))


@pytest.fixture(scope="session")
def payload_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("payload") / "payload"
    cc = shutil.which("musl-gcc") or "gcc"
    local.run([cc, "-static", "-Os", "-s", "-o", str(out), str(HERE / "payload.c")], timeout=120)
    return out


class GuestFactory:
    def __init__(self, tmp: Path, init: Path, payload: Path) -> None:
        self.tmp = tmp
        self.init = init
        self.payload = payload
        self.guests: list[Guest] = []
        self.n = 0

    def boot(
        self,
        config: GuestConfig | None,
        *,
        image: dict[str, object] | None = None,
        net: bool = True,
        extra_files: dict[str, Path | bytes] | None = None,
        extra_append: str = "",
        netdev: str | None = None,
        console_socket: bool = False,
    ) -> Guest:
        self.n += 1
        d = self.tmp / f"g{self.n}"
        d.mkdir()
        img: dict[str, object] = {
            "entrypoint": ["/bin/payload", "first arg"],
            "env": {"HOME": "/", "PAYLOAD_MODE": "serve"},
            "workdir": "/",
            "modules": [str(MODDIR / m) for m in NET_MODULES],
        }
        img.update(image or {})
        files: dict[str, Path | bytes] = {
            "init": self.init,
            "bin/payload": self.payload,
            "uniklab/image.json": json.dumps(img).encode(),
        }
        for m in NET_MODULES:
            files[str(MODDIR / m)] = MODDIR / m
        files.update(extra_files or {})
        initrd = d / "initrd.cpio"
        write_initramfs(initrd, files)
        port = free_port()
        append = f"console=ttyS0 reboot=t panic=-1 tsc_early_khz={tsc_khz()} quiet"
        if config is not None:
            append += " " + config.encode()
        if extra_append:
            append += " " + extra_append
        argv = [
            "qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-cpu", "max",
            "-m", "256", "-smp", "1", "-no-reboot", "-nographic", "-nodefaults",
            "-kernel", str(KERNEL), "-initrd", str(initrd), "-append", append,
        ]  # fmt: skip
        if console_socket:  # two-way, as uniklab's QEMU backend makes it
            argv += [
                "-chardev",
                f"socket,id=con0,path={d / 'console.sock'},server=on,wait=off,"
                f"logfile={d / 'console.log'}",
                "-serial", "chardev:con0",
            ]  # fmt: skip
        else:
            argv += ["-serial", f"file:{d / 'console.log'}"]
        if net:
            # `netdev` replaces user-mode networking (e.g. a FakeLan's dgram netdev).
            argv += [
                "-netdev", netdev or f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:7777",
                "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
            ]  # fmt: skip
        log = d / "qemu.log"
        proc = spawn_detached(argv, log_path=log)
        g = Guest(proc, d / "console.log", port, log, argv)
        self.guests.append(g)
        return g

    def close(self) -> None:
        for g in self.guests:
            g.kill()


@pytest.fixture
def guests(tmp_path: Path, init_binary: Path, payload_binary: Path) -> Iterator[GuestFactory]:
    if HOST_KERNEL is None or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs a readable /boot/vmlinuz-* with its modules and qemu-system-x86_64")
    f = GuestFactory(tmp_path, init_binary, payload_binary)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="session")
def json_harness_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_harness(tmp_path_factory.mktemp("json-harness"))
    except SanitizersUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def json_harness(
    json_harness_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JsonHarness]:
    harness = JsonHarness(json_harness_binary, tmp_path_factory.mktemp("json-harness-run"))
    try:
        yield harness
    finally:
        harness.close()


__all__ = ["Guest", "GuestFactory", "write_initramfs"]
