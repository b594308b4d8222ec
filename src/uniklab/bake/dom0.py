"""The dom0 image builder of the virtual Xen host: Debian's Xen 4.17 and a PV dom0.

``fetch_xen`` downloads Xen's packages with ``apt-get download`` and unpacks them with
``dpkg-deb -x`` into the cache (nothing is installed on this machine); ``build_initrd``
makes the dom0's initramfs (the host's kernel modules, a bash init, the toolstack, sshd,
dnsmasq on an internal bridge ``xenbr0``); ``bake`` does both and says how to boot the
result.  ``pv_initrd`` gives a baked image's initramfs a Xen PV flavour.  The running
machine is ``uniklab.hosts.virtual_xen``'s.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from uniklab.bake import cpio, elf, kmod
from uniklab.bake.baker import BASE_MODULES
from uniklab.bake.kernel_choice import host_kernel
from uniklab.errors import BakeError, CommandError
from uniklab.executor import local
from uniklab.paths import Paths

__all__ = [
    "CONSOLE_DIR",
    "LEASES",
    "READY_MARK",
    "VIF_SCRIPT",
    "Dom0Image",
    "bake",
    "build_initrd",
    "fetch_xen",
    "pv_initrd",
    "xen_image",
]

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
    "loop",  # file-backed domU disks (dom0_files/block)
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
    "/usr/sbin/losetup",
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
DATA = Path(__file__).with_name("dom0_files")
VIF_SCRIPT = "/etc/xen/scripts/vif-uniklab"
LEASES = "/var/lib/misc/dnsmasq.leases"
CONSOLE_DIR = "/var/log/xen/console"
READY_MARK = "uniklab-dom0: ready"  # the init's console line once sshd runs

_APT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Dom0Image:
    """What boots the virtual Xen host: Xen with its command line, the dom0's kernel with
    its command line, and the dom0's initramfs."""

    xen: Path
    xen_args: str
    kernel: Path
    kernel_args: str
    initrd: Path


def bake(
    paths: Paths, *, hostname: str, authorized_key: str, host_key: Path, initrd: Path
) -> Dom0Image:
    """Xen's packages (fetched once) and a dom0 initramfs written to ``initrd`` that
    lets ``authorized_key`` in as root and presents ``host_key``; the dom0 runs the
    host's kernel."""
    root = fetch_xen(paths)
    kernel, release = host_kernel()
    initrd.write_bytes(
        build_initrd(
            root,
            hostname=hostname,
            authorized_key=authorized_key,
            host_key=host_key,
            release=release,
        )
    )
    return Dom0Image(
        xen=xen_image(root), xen_args=XEN_ARGS, kernel=kernel, kernel_args=DOM0_ARGS, initrd=initrd
    )


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


def xen_image(root: Path) -> Path:
    """The hypervisor's ELF in the unpacked packages (what QEMU's multiboot loader takes)."""
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


def build_initrd(
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
    arc.add_file_from("/etc/xen/scripts/block", DATA / "block", mode=0o755)
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
    data = cpio.decompress(image_initrd.read_bytes())
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
    """/uniklab/image.json of an uncompressed initramfs."""
    raw = cpio.read_file(newc, "/uniklab/image.json")
    if raw is None:
        raise BakeError("initramfs has no /uniklab/image.json")
    doc: dict[str, object] = json.loads(raw)
    return doc
