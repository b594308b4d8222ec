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
from collections.abc import Callable, Sequence
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
    "LIBVIRT_SOCKET",
    "READY_MARK",
    "VIF_SCRIPT",
    "Dom0Image",
    "bake",
    "build_initrd",
    "fetch_libvirt",
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
# libvirtd with its Xen (libxl) driver, for ``lab up --libvirt``: only the daemon, the
# libxl and storage drivers (images arrive as volumes of a dir pool) and the helper that
# libvirt's ssh transport runs; their other libraries are the host's, like the tools'.
LIBVIRT_PACKAGES = ("libvirt0", "libvirt-daemon", "libvirt-daemon-driver-xen")
_LIBVIRT_LIB = "/usr/lib/x86_64-linux-gnu/libvirt"
# libvirt_iohelper moves storage volume data (upload, download).
LIBVIRT_TOOLS = (
    "/usr/sbin/libvirtd",
    "/usr/bin/virt-ssh-helper",
    "/usr/lib/libvirt/libvirt_iohelper",
)
# dlopen()ed by libvirtd from the paths built into it.
LIBVIRT_MODULES = (
    f"{_LIBVIRT_LIB}/connection-driver/libvirt_driver_libxl.so",
    f"{_LIBVIRT_LIB}/connection-driver/libvirt_driver_storage.so",
    f"{_LIBVIRT_LIB}/storage-backend/libvirt_storage_backend_fs.so",
    f"{_LIBVIRT_LIB}/storage-file/libvirt_storage_file_fs.so",
)
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
CPU_MAP = "/usr/share/libvirt/cpu_map"
# Where the dom0's init (dom0_files/init: its say()) logs, daemons it started again included.
INIT_LOG = "/var/log/uniklab-dom0.log"
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
    f"{XEN_BIN}/libxl-save-helper",  # xl save / restore / migrate run it
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
    paths: Paths,
    *,
    hostname: str,
    authorized_key: str,
    host_key: Path,
    initrd: Path,
    libvirt: bool = False,
) -> Dom0Image:
    """Xen's packages (fetched once) and a dom0 initramfs written to ``initrd`` that
    lets ``authorized_key`` in as root and presents ``host_key``; the dom0 runs the
    host's kernel.  With ``libvirt``, the dom0 runs libvirtd (its libxl driver) too."""
    root = fetch_xen(paths)
    libvirt_root = fetch_libvirt(paths) if libvirt else None
    kernel, release = host_kernel()
    initrd.write_bytes(
        build_initrd(
            root,
            hostname=hostname,
            authorized_key=authorized_key,
            host_key=host_key,
            release=release,
            libvirt_root=libvirt_root,
        )
    )
    return Dom0Image(
        xen=xen_image(root), xen_args=XEN_ARGS, kernel=kernel, kernel_args=DOM0_ARGS, initrd=initrd
    )


# ---------------------------------------------------------------- Xen's packages


def _fetch(
    base: Path,
    root: Path,
    packages: Sequence[str],
    what: str,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """``packages`` downloaded with apt and unpacked into ``root`` (once): a staging
    folder renamed into place when complete."""
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
        local.run([*argv, *packages], cwd=debs, timeout=_APT_TIMEOUT)
    except CommandError as exc:
        raise BakeError(
            f"cannot download {what}'s packages ({exc}); is 'apt-get update' done?"
        ) from exc
    staging = base / f".{root.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for deb in sorted(debs.glob("*.deb")):
            local.run(["dpkg-deb", "-x", deb, staging], timeout=120)
        if finish is not None:
            finish(staging)
        (staging / ".complete").write_text(" ".join(sorted(p.name for p in debs.glob("*.deb"))))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(debs, ignore_errors=True)
    return root


def fetch_xen(paths: Paths) -> Path:
    """Debian's Xen packages unpacked into the cache (once); returns that root folder."""
    base = paths.cache / "xen"
    return _fetch(base, base / f"root-{XEN_SERIES}", XEN_PACKAGES, "Xen", _gunzip_xen)


def _gunzip_xen(root: Path) -> None:
    # QEMU's multiboot loader wants the ELF itself, not the gzip Debian ships.
    packed = root / "boot" / f"xen-{XEN_SERIES}-amd64.gz"
    (root / "boot" / f"xen-{XEN_SERIES}-amd64").write_bytes(gzip.decompress(packed.read_bytes()))


def fetch_libvirt(paths: Paths) -> Path:
    """Debian's libvirt daemon and its Xen driver unpacked into the cache (once)."""
    base = paths.cache / "xen"
    return _fetch(base, base / "root-libvirt", LIBVIRT_PACKAGES, "libvirt")


def xen_image(root: Path) -> Path:
    """The hypervisor's ELF in the unpacked packages (what QEMU's multiboot loader takes)."""
    return root / "boot" / f"xen-{XEN_SERIES}-amd64"


# ---------------------------------------------------------------- the dom0 initramfs


def _in_root(root: Path, image: str | PurePosixPath) -> Path:
    return root.joinpath(*PurePosixPath(image).parts[1:])


def _xen_libs(
    roots: Sequence[Path], binaries: Sequence[Path]
) -> tuple[dict[PurePosixPath, Path], list[str]]:
    """Libraries of the unpacked binaries that the unpacked packages (under ``roots``)
    provide, and the names of the rest (the host's: libc and friends), walking DT_NEEDED
    breadth-first.

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
        cands = [c for c in (_in_root(r, libdir / name) for r in roots) if c.exists()]
        if cands:
            found[libdir / name] = cands[0].resolve()
            queue.extend(elf.elf_info(cands[0]).needed)
        else:
            host.append(name)
    return found, host


def _cpu_model(name: str, xml: bytes) -> bytes:
    """A model of libvirt's CPU map as the dom0 gets it: TCG has no VME (Xen's hw_caps
    word 0 lacks bit 1) while every x86 model of libvirt requires it, so the libxl driver
    would fail ('Cannot find suitable CPU model for given data', then 'cannot create
    capabilities for libxenlight').  The smallest model, 486, goes without it; the PV
    guests never use a CPU model."""
    if name != "x86_486.xml":
        return xml
    return b"".join(ln for ln in xml.splitlines(keepends=True) if b"name='vme'" not in ln)


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
    root: Path,
    *,
    hostname: str,
    authorized_key: str,
    host_key: Path,
    release: str,
    libvirt_root: Path | None = None,
) -> bytes:
    """The dom0's initramfs (lz4): bash init, toolstack, sshd, dnsmasq, modules; and
    libvirtd with its libxl driver when ``libvirt_root`` has its unpacked packages."""
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

    roots = [root]
    if libvirt_root is not None:
        roots.append(libvirt_root)
        for image in (*LIBVIRT_TOOLS, *LIBVIRT_MODULES):
            src = _in_root(libvirt_root, image)
            if not src.is_file():
                raise BakeError(f"{image}: not in the unpacked libvirt packages ({libvirt_root})")
            arc.add_file_from(image, src, mode=0o755)
            xen_bins.append(src)
        # libvirt's CPU models, which its libxl driver needs to describe the host CPU.
        for f in sorted(_in_root(libvirt_root, CPU_MAP).glob("*.xml")):
            arc.add_file(f"{CPU_MAP}/{f.name}", _cpu_model(f.name, f.read_bytes()), mode=0o644)
        arc.add_file_from("/etc/libvirt/libvirtd.conf", DATA / "libvirtd.conf", mode=0o644)
    xen_libs, host_names = _xen_libs(roots, xen_bins)
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
    # libxl's own default, which toolstacks other than xl (libvirt's libxl driver) use.
    arc.add_file_from("/etc/xen/scripts/vif-bridge", DATA / "vif-uniklab", mode=0o755)
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
