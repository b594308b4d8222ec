"""A virtual Xen host ("lab in a box", issue #4): Debian's real Xen under QEMU (TCG).

``lab_up`` boots Xen 4.17 with a PV dom0 that uniklab builds (the host's kernel, a bash
init, the Xen toolstack from Debian's packages, sshd, dnsmasq on an internal bridge
``xenbr0``) and returns once ``ssh … xl list`` answers on 127.0.0.1; ``lab_down`` stops
it.  The QEMU outlives the CLI, with a runtime directory like an instance's.  Xen's
packages are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the
cache: nothing is installed on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from uniklab import validate
from uniklab.backends import process, qmp
from uniklab.backends.qemu_argv import RunFiles, XenHostSpec, build_xenhost_argv
from uniklab.bake import cpio, elf, kmod
from uniklab.bake.baker import BASE_MODULES
from uniklab.bake.kernel import host_kernel
from uniklab.errors import (
    BakeError,
    CommandError,
    LaunchError,
    NotFoundError,
    ProbeTimeoutError,
    UniklabError,
)
from uniklab.executor import local
from uniklab.hosts.inventory import Host
from uniklab.hosts.ssh import SshExecutor
from uniklab.paths import Paths

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NAME",
    "LabFiles",
    "LabHost",
    "LabStatus",
    "build_dom0_initrd",
    "fetch_xen",
    "lab_down",
    "lab_status",
    "lab_up",
    "pv_initrd",
    "ssh_argv",
]

DEFAULT_NAME = "xenlab"
XEN_SERIES = "4.17"
XEN_PACKAGES = (
    f"xen-hypervisor-{XEN_SERIES}-amd64",
    f"xen-utils-{XEN_SERIES}",
    "xen-utils-common",
    "xenstore-utils",
    f"libxenmisc{XEN_SERIES}",
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxenstore4",
    "libxentoolcore1",
    "libxentoollog1",
    "libyajl2",
    # sshd comes unpacked too, so the host needs no ssh service of its own.
    "openssh-server",
    "openssh-sftp-server",
)
XEN_BIN = PurePosixPath(f"/usr/lib/xen-{XEN_SERIES}/bin")
# Xen: its console on the emulated COM1 (the serial log), a fixed-size dom0 with one vCPU.
XEN_ARGS = "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1"
DOM0_ARGS = "console=hvc0 earlyprintk=xen quiet"
DOM0_MODULES = (
    "xen_privcmd",
    "xenfs",
    "xen_evtchn",
    "xen_gntdev",
    "xen_gntalloc",
    "xen_blkback",
    "xen_netback",
    "bridge",
    "virtio_pci",
    "virtio_net",
)
# Host programs copied into dom0, at their own paths.  Optional ones are skipped when
# the host lacks them (they only help someone poking around over ssh).
HOST_TOOLS = (
    "/usr/bin/bash",
    "/usr/bin/cat",
    "/usr/bin/chmod",
    "/usr/bin/cp",
    "/usr/bin/ln",
    "/usr/bin/ls",
    "/usr/bin/mkdir",
    "/usr/bin/mount",
    "/usr/bin/rm",
    "/usr/bin/sleep",
    "/usr/bin/ip",
    "/usr/bin/kmod",
    "/usr/sbin/dnsmasq",
    "/usr/bin/redis-cli",
)
HOST_TOOLS_OPTIONAL = (
    "/usr/bin/umount",
    "/usr/bin/mv",
    "/usr/bin/uname",
    "/usr/bin/env",
    "/usr/bin/date",
    "/usr/bin/grep",
    "/usr/bin/head",
    "/usr/bin/tail",
    "/usr/bin/cut",
    "/usr/bin/tr",
    "/usr/bin/sed",
    "/usr/bin/wc",
    "/usr/bin/base64",
    "/usr/bin/sha256sum",
    "/usr/bin/dmesg",
    "/usr/bin/ps",
    "/usr/bin/free",
    "/usr/bin/kill",
    "/usr/sbin/bridge",
)
KMOD_LINKS = ("insmod", "modprobe", "lsmod", "rmmod", "modinfo")
# Files taken from the unpacked packages.
XEN_TOOLS = (
    f"{XEN_BIN}/xl",
    f"{XEN_BIN}/xenstored",
    f"{XEN_BIN}/xenconsoled",
    f"{XEN_BIN}/xenconsole",
    f"{XEN_BIN}/xen-init-dom0",
    "/usr/bin/xenstore",
    "/usr/sbin/sshd",
    "/usr/lib/openssh/sftp-server",
)
# xenstore dispatches on argv[0].
XENSTORE_LINKS = ("read", "write", "rm", "ls", "list", "exists", "chmod", "watch")
DATA = Path(__file__).with_name("dom0")
VIF_SCRIPT = "/etc/xen/scripts/vif-uniklab"
LEASES = "/var/lib/misc/dnsmasq.leases"
CONSOLE_DIR = "/var/log/xen/console"

UP_TIMEOUT = 180.0
_SSH_PROBE_TIMEOUT = 20.0
_APT_TIMEOUT = 300.0
_READY_MARK = "uniklab-dom0: ready"


@dataclass(frozen=True)
class LabHost:
    """What a caller needs to reach a running lab over SSH (the lead's ``Host`` fields)."""

    name: str
    ssh_target: str
    ssh_port: int
    identity_file: str
    known_hosts: str
    bmc: str | None = None
    hypervisor: str = "xen"

    def inventory_fields(self) -> dict[str, str | int]:
        """This lab as the fields of an inventory ``Host``."""
        return {
            "name": self.name,
            "ssh": self.ssh_target,
            "port": self.ssh_port,
            "identity": str(self.identity_file),
            "known_hosts": str(self.known_hosts),
            "hypervisor": self.hypervisor,
        }


@dataclass(frozen=True)
class LabStatus:
    name: str
    running: bool
    pid: int | None
    ssh_port: int | None
    uptime: float | None
    rundir: str
    console_log: str


@dataclass(frozen=True)
class LabFiles:
    """Where one lab keeps its keys, its dom0 initramfs, its record and runtime directory."""

    paths: Paths
    name: str

    @property
    def dir(self) -> Path:
        return self.paths.home / "labs" / self.name

    @property
    def identity(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def initrd(self) -> Path:
        return self.dir / "dom0.initrd"

    @property
    def record(self) -> Path:
        return self.dir / "lab.json"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def run(self) -> RunFiles:
        return RunFiles(self.dir / "run")


# ---------------------------------------------------------------- Xen's packages


def fetch_xen(paths: Paths) -> Path:
    """Debian's Xen packages unpacked into the cache (once); returns that root folder."""
    base = paths.cache / "xen"
    root = base / f"root-{XEN_SERIES}"
    if (root / ".complete").is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    debs = base / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir()
    argv = ["apt-get", "download"]
    if os.geteuid() == 0:
        # The cache is private (0700): apt's _apt sandbox user could not write there.
        argv += ["-o", "APT::Sandbox::User=root"]
    try:
        local.run([*argv, *XEN_PACKAGES], cwd=debs, timeout=_APT_TIMEOUT)
    except CommandError as exc:
        raise BakeError(
            f"cannot download Xen's packages ({exc}); is 'apt-get update' done?"
        ) from exc
    staging = base / f".root-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for deb in sorted(debs.glob("*.deb")):
            local.run(["dpkg-deb", "-x", deb, staging], timeout=120)
        packed = staging / "boot" / f"xen-{XEN_SERIES}-amd64.gz"
        # QEMU's multiboot loader wants the ELF itself, not the gzip Debian ships.
        (staging / "boot" / f"xen-{XEN_SERIES}-amd64").write_bytes(
            gzip.decompress(packed.read_bytes())
        )
        (staging / ".complete").write_text(" ".join(sorted(p.name for p in debs.glob("*.deb"))))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _xen_image(root: Path) -> Path:
    return root / "boot" / f"xen-{XEN_SERIES}-amd64"


# ---------------------------------------------------------------- the dom0 initramfs


def _in_root(root: Path, image: str | PurePosixPath) -> Path:
    return root.joinpath(*PurePosixPath(image).parts[1:])


def _xen_libs(root: Path, binaries: Sequence[Path]) -> tuple[dict[PurePosixPath, Path], list[str]]:
    """Libraries of the unpacked binaries that the unpacked packages provide, and the
    names of the rest (the host's: libc and friends), walking DT_NEEDED breadth-first.

    Debian's Xen binaries carry no RPATH/RUNPATH, so a plain search of the multiarch
    directory under ``root`` is what ld.so would do."""
    libdir = PurePosixPath("/usr/lib/x86_64-linux-gnu")
    found: dict[PurePosixPath, Path] = {}
    host: list[str] = []
    queue = [n for b in binaries for n in elf.elf_info(b).needed]
    seen: set[str] = set()
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        cand = _in_root(root, libdir / name)
        if cand.exists():
            found[libdir / name] = cand.resolve()
            queue.extend(elf.elf_info(cand).needed)
        else:
            host.append(name)
    return found, host


def _passwd() -> tuple[bytes, bytes, bytes]:
    passwd = (
        "root:x:0:0:root:/root:/bin/bash\n"
        "sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"
    # "*": no password, but not locked ("!" would make sshd refuse the key too).
    shadow = "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n"
    return passwd.encode(), group.encode(), shadow.encode()


def build_dom0_initrd(
    root: Path, *, hostname: str, authorized_key: str, host_key: Path, release: str
) -> bytes:
    """The dom0's initramfs (lz4): bash init, toolstack, sshd, dnsmasq, modules."""
    arc = cpio.CpioArchive()
    for d in (
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/tmp",
        "/var",
        "/var/lib",
        "/etc",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
    ):
        arc.add_dir(d)
    arc.add_dir("/root", mode=0o700)
    arc.add_dir("/root/.ssh", mode=0o700)
    arc.add_device("/dev/console", "c", 5, 1)
    arc.add_device("/dev/null", "c", 1, 3, mode=0o666)
    # A merged /usr as on the host; libraries go to /lib and /usr/lib as ld.so finds them.
    arc.add_symlink("/bin", "usr/bin")
    arc.add_symlink("/sbin", "usr/sbin")
    # A dom0 as uniklab drives it has a POSIX sh (`sh -c`, like every Debian host).
    arc.add_symlink("/usr/bin/sh", "bash")
    arc.add_symlink("/var/run", "/run")
    arc.add_symlink("/var/lock", "/run/lock")

    host_bins = [Path(p) for p in HOST_TOOLS]
    missing = [str(p) for p in host_bins if not p.is_file()]
    if missing:
        raise BakeError(f"the lab's dom0 needs {', '.join(missing)} on this machine")
    host_bins += [Path(p) for p in HOST_TOOLS_OPTIONAL if Path(p).is_file()]
    for b in host_bins:
        arc.add_file_from(str(b), b, mode=0o755)
    for link in KMOD_LINKS:
        arc.add_symlink(f"/usr/sbin/{link}", "/usr/bin/kmod")

    xen_bins = [_in_root(root, p) for p in XEN_TOOLS]
    for image, src in zip(XEN_TOOLS, xen_bins, strict=True):
        if not src.is_file():
            raise BakeError(f"{image}: not in the unpacked Xen packages ({root})")
        arc.add_file_from(image, src, mode=0o755)
    for op in XENSTORE_LINKS:
        arc.add_symlink(f"/usr/bin/xenstore-{op}", "xenstore")
    for prog in ("xl", "xenconsole"):
        arc.add_symlink(f"/usr/sbin/{prog}", f"{XEN_BIN}/{prog}")

    xen_libs, host_names = _xen_libs(root, xen_bins)
    for image_path, src in sorted(xen_libs.items()):
        arc.add_file_from(str(image_path), src)
    # The host's libraries for both sets; bash is the anchor elf_closure needs.
    libs = elf.elf_closure(host_bins, extra_libs=host_names)
    for image_path, src in sorted(libs.items()):
        if image_path not in arc:
            arc.add_file_from(str(image_path), src)

    modules = kmod.module_closure(DOM0_MODULES, kernel_release=release)
    for m in modules:
        arc.add_file(str(m.image_path), kmod.module_bytes(m))
    arc.add_file("/etc/uniklab/modules", "".join(f"{m.image_path}\n" for m in modules).encode())

    arc.add_file_from("/init", DATA / "init", mode=0o755)
    arc.add_file_from(VIF_SCRIPT, DATA / "vif-uniklab", mode=0o755)
    arc.add_file_from("/etc/xen/xl.conf", DATA / "xl.conf", mode=0o644)
    arc.add_file_from("/etc/ssh/sshd_config", DATA / "sshd_config", mode=0o644)
    arc.add_file_from("/etc/ssh/ssh_host_ed25519_key", host_key, mode=0o600)
    arc.add_file("/root/.ssh/authorized_keys", authorized_key.encode(), mode=0o600)
    passwd, group, shadow = _passwd()
    arc.add_file("/etc/passwd", passwd)
    arc.add_file("/etc/group", group)
    arc.add_file("/etc/shadow", shadow, mode=0o640)
    arc.add_file(
        "/etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
    )
    arc.add_file("/etc/hostname", f"{hostname}\n".encode())
    arc.add_file("/etc/hosts", f"127.0.0.1 localhost {hostname}\n".encode())
    return cpio.compress(arc.to_bytes())


def pv_initrd(image_initrd: Path, *, release: str) -> bytes:
    """A Xen PV flavour of a baked image's initramfs, for images baked before the baker
    added xen-netfront to every image; such an image comes back unchanged.

    Older images load only virtio modules (listed in /uniklab/image.json); a PV domU needs
    xen-netfront instead.  The kernel unpacks concatenated cpio archives in order, later
    files replacing earlier ones, so an uncompressed archive appended to the decompressed
    image adds the module and a new image.json that lists it; the result is compressed
    again as a whole."""
    data = image_initrd.read_bytes()
    if data[:4] == b"\x02\x21\x4c\x18":  # lz4 legacy frame
        with tempfile.TemporaryDirectory(prefix="uniklab-pv-") as tmp:
            src, dst = Path(tmp) / "in.lz4", Path(tmp) / "out"
            src.write_bytes(data)
            local.run(["lz4", "-d", "-f", "-q", src, dst], timeout=60)
            data = dst.read_bytes()
    elif data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    doc = _image_json(data)
    mods = kmod.module_closure(["xen_netfront"], kernel_release=release)
    listed = doc.get("modules", [])
    if isinstance(listed, list) and str(mods[-1].image_path) in listed:
        return image_initrd.read_bytes()  # baked with netfront already (BASE_MODULES)
    overlay = cpio.CpioArchive()
    for m in mods:
        overlay.add_file(str(m.image_path), kmod.module_bytes(m))
    # The QEMU network modules (and what they pulled in) are of no use on Xen.
    qemu_only = {
        str(m.image_path) for m in kmod.module_closure(BASE_MODULES, kernel_release=release)
    }
    kept = [p for p in listed if p not in qemu_only] if isinstance(listed, list) else []
    doc["modules"] = [str(m.image_path) for m in mods] + kept
    overlay.add_file("/uniklab/image.json", json.dumps(doc, indent=1).encode())
    pad = b"\0" * (-len(data) % 4)
    # One compressed stream: the kernel's cpio reader goes on past the first trailer.
    return cpio.compress(data + pad + overlay.to_bytes())


def _image_json(newc: bytes) -> dict[str, object]:
    """Read /uniklab/image.json out of an uncompressed newc archive."""
    off = 0
    while off + 110 <= len(newc):
        if newc[off : off + 6] != b"070701":
            raise BakeError("initramfs: not a newc cpio archive")
        fsize = int(newc[off + 54 : off + 62], 16)
        nsize = int(newc[off + 94 : off + 102], 16)
        name = newc[off + 110 : off + 110 + nsize - 1].decode()
        data_off = off + 110 + nsize
        data_off += -data_off % 4
        if name == "uniklab/image.json":
            doc: dict[str, object] = json.loads(newc[data_off : data_off + fsize])
            return doc
        if name == "TRAILER!!!":
            break
        off = data_off + fsize
        off += -off % 4
    raise BakeError("initramfs has no /uniklab/image.json")


# ---------------------------------------------------------------- keys


def _ensure_key(path: Path, comment: str) -> str:
    """An ed25519 keypair at ``path`` (0600), made once; returns the public key line."""
    pub = path.with_name(path.name + ".pub")
    if not (path.is_file() and pub.is_file()):
        path.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        local.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
            timeout=30,
        )
    path.chmod(0o600)
    return pub.read_text().strip()


def executor(host: LabHost, *, connect_timeout: int = 5) -> SshExecutor:
    """The lab's dom0 as uniklab's SSH executor, checking its recorded host key."""
    return SshExecutor(
        Host.model_validate(host.inventory_fields()), connect_timeout=connect_timeout
    )


def ssh_argv(host: LabHost, remote: Sequence[str], *, connect_timeout: int = 5) -> list[str]:
    """ssh into the lab's dom0; ``remote`` is an argv."""
    return executor(host, connect_timeout=connect_timeout).ssh_argv(remote)


# ---------------------------------------------------------------- up / down / status


@contextlib.contextmanager
def _locked(files: LabFiles) -> Iterator[None]:
    files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(files.lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _read_record(files: LabFiles) -> dict[str, object] | None:
    try:
        doc: dict[str, object] = json.loads(files.record.read_text())
        return doc
    except (OSError, ValueError):
        return None


def _alive(files: LabFiles, rec: dict[str, object] | None) -> int | None:
    pid = rec.get("pid") if rec else None
    if isinstance(pid, int) and process.matches(pid, str(files.run.rundir)):
        return pid
    return None


def _host(files: LabFiles, port: int) -> LabHost:
    return LabHost(
        name=files.name,
        ssh_target="root@127.0.0.1",
        ssh_port=port,
        identity_file=str(files.identity),
        known_hosts=str(files.known_hosts),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _console_tail(files: LabFiles, lines: int = 30) -> str:
    try:
        text = files.run.console_log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def lab_up(paths: Paths, name: str = DEFAULT_NAME, *, timeout: float = UP_TIMEOUT) -> LabHost:
    """Boot the lab and wait until ``xl list`` answers over ssh; a lab that already runs
    is returned as it is once it answers.  If a boot fails, its QEMU is stopped and its
    runtime directory removed."""
    validate.name(name, "lab name")
    paths.ensure()
    files = LabFiles(paths, name)
    with _locked(files):
        rec = _read_record(files)
        running = _alive(files, rec)
        if running is not None and rec is not None:
            log.info("lab %s already runs (pid %s)", name, running)
            host = _host(files, int(str(rec["ssh_port"])))
            # It may still be booting (a `lab up` killed while it waited): wait the same.
            _wait_ready(files, host, running, time.monotonic() + timeout)
            return host
        _cleanup(files, rec)  # debris of a lab that died or a killed `lab up`

        root = fetch_xen(paths)
        kernel, release = host_kernel()
        client_pub = _ensure_key(files.identity, f"uniklab@{name}")
        host_pub = _ensure_key(files.host_key, f"root@{name}")
        files.initrd.write_bytes(
            build_dom0_initrd(
                root,
                hostname=name,
                authorized_key=client_pub + "\n",
                host_key=files.host_key,
                release=release,
            )
        )
        port = _free_port()
        # The key type and key, without the comment, for the port this boot listens on.
        key = " ".join(host_pub.split()[:2])
        files.known_hosts.write_text(f"[127.0.0.1]:{port} {key}\n")
        files.known_hosts.chmod(0o600)

        rundir = files.run.rundir
        rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
        spec = XenHostSpec(
            name=name,
            xen=_xen_image(root),
            xen_args=XEN_ARGS,
            dom0_kernel=kernel,
            dom0_args=DOM0_ARGS,
            dom0_initrd=files.initrd,
            rundir=rundir,
            ssh_port=port,
        )
        argv = build_xenhost_argv(spec)
        (rundir / "argv.json").write_text(json.dumps(argv))
        started = time.monotonic()
        pid: int | None = None
        try:
            try:
                local.run(argv, timeout=60)
            except CommandError as exc:
                raise LaunchError(
                    f"QEMU failed to start the lab: {exc}", argv=argv, output=exc.stderr
                ) from exc
            try:
                pid = int(files.run.pidfile.read_text().strip())
            except (OSError, ValueError) as exc:
                raise LaunchError("QEMU started but wrote no pid file", argv=argv) from exc
            files.record.write_text(
                json.dumps(
                    {
                        "name": name,
                        "pid": pid,
                        "ssh_port": port,
                        "rundir": str(rundir),
                        "identity_file": str(files.identity),
                        "known_hosts": str(files.known_hosts),
                        "started": time.time(),
                    },
                    indent=1,
                )
            )
            host = _host(files, port)
            _wait_ready(files, host, pid, started + timeout)
        except BaseException:
            _cleanup(files, {"pid": pid} if pid else None)
            raise
        log.info("lab %s up in %.1fs (ssh port %d)", name, time.monotonic() - started, port)
        return host


def _wait_ready(files: LabFiles, host: LabHost, pid: int, deadline: float) -> None:
    marker = str(files.run.rundir)
    last = "no answer yet"
    while True:
        if not process.matches(pid, marker):
            raise LaunchError(
                "the lab's QEMU exited while booting", output=_console_tail(files, 60)
            )
        # Ask sshd only once the init says it started it: no futile handshakes under TCG.
        if _READY_MARK in _console_tail(files, 400):
            try:
                res = local.run(ssh_argv(host, ["xl", "list"]), timeout=_SSH_PROBE_TIMEOUT)
                if "Domain-0" in res.stdout:
                    return
                last = f"xl list printed {res.stdout.strip()[:200]!r}"
            except CommandError as exc:
                last = str(exc)
        if time.monotonic() >= deadline:
            raise ProbeTimeoutError(
                f"lab {files.name}: 'xl list' over ssh did not answer in time",
                last_error=last,
                console_tail=_console_tail(files),
            )
        time.sleep(1.0)


def _cleanup(files: LabFiles, rec: dict[str, object] | None) -> None:
    """Stop the lab's QEMU (QMP quit, SIGTERM, SIGKILL) and remove its runtime state."""
    marker = str(files.run.rundir)
    pid = rec.get("pid") if rec else None
    if not isinstance(pid, int):
        # A `lab up` killed between QEMU's start and the record: the pid file knows.
        with contextlib.suppress(OSError, ValueError):
            pid = int(files.run.pidfile.read_text().strip())
    try:
        if isinstance(pid, int) and process.matches(pid, marker):
            try:
                qmp.call(files.run.qmp, "quit", timeout=2.0)
            except qmp.QmpUnavailable as exc:
                log.debug("qmp quit failed: %s", exc)
            if not process.wait_gone(pid, marker, 5.0):
                process.stop(pid, marker, grace=5.0)
            if process.matches(pid, marker):
                raise UniklabError(f"lab {files.name}: QEMU (pid {pid}) would not stop")
    finally:
        shutil.rmtree(files.run.rundir, ignore_errors=True)
        files.record.unlink(missing_ok=True)


def lab_down(paths: Paths, name: str = DEFAULT_NAME) -> None:
    """Stop the lab and remove its runtime directory and record (keys are kept)."""
    validate.name(name, "lab name")
    files = LabFiles(paths, name)
    if not files.dir.is_dir():
        raise NotFoundError(f"no lab named {name}")
    with _locked(files):
        rec = _read_record(files)
        if rec is None and not files.run.rundir.exists():
            raise NotFoundError(f"lab {name} is not up")
        _cleanup(files, rec)


def lab_status(paths: Paths, name: str = DEFAULT_NAME) -> LabStatus:
    validate.name(name, "lab name")
    files = LabFiles(paths, name)
    rec = _read_record(files)
    pid = _alive(files, rec)
    info = process.info(pid) if pid else None
    port = rec.get("ssh_port") if rec else None
    return LabStatus(
        name=name,
        running=pid is not None,
        pid=pid,
        ssh_port=port if isinstance(port, int) else None,
        uptime=info.uptime if info else None,
        rundir=str(files.run.rundir),
        console_log=str(files.run.console_log),
    )
