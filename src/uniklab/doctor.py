"""What this machine can do: each feature's prerequisites checked, each failure with the
command that fixes it (``uniklab doctor``; ``host doctor`` checks an inventory host).

A finding is OK, WARN (an optional part is missing, or a slower path will be taken:
TCG instead of KVM) or FAIL (a required part is missing: running or baking the default
images cannot work).  Everything read of the machine goes through ``Machine``, so the
checks are tested without a particular host.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from uniklab.errors import UniklabError

OK, WARN, FAIL = "OK", "WARN", "FAIL"
KVM = Path("/dev/kvm")
CAP_NET_ADMIN = 12  # linux/capability.h


@dataclass(frozen=True)
class Finding:
    feature: str  # what it is for: "run on QEMU", "bake", "networks", ...
    check: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""  # the command(s) that fix a WARN or FAIL

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _accel() -> tuple[str, str]:
    """The bounded probe `run` uses (cached per boot): real-mode firmware, then a Linux
    kernel that must reach user space (``hostinfo.choose_accel`` finds one)."""
    from uniklab.backends import hostinfo

    return hostinfo.choose_accel(None)


def _host_kernel() -> Path:
    from uniklab.bake.kernel_choice import host_kernel

    return host_kernel()[0]


def _unreadable_kernels() -> list[Path]:
    return [p for p in sorted(Path("/boot").glob("vmlinuz-*")) if not os.access(p, os.R_OK)]


def _toolchains() -> list[str]:
    from uniklab.toolchain import rumprun

    return sorted({t.platform for t in rumprun.installed()})


def _kernel_built(profile: str) -> bool:
    from uniklab.kernel import build

    return build.cached(profile) is not None


def _profiles() -> list[str]:
    from uniklab.kernel import config

    return sorted(config.PROFILES)


def _dom0() -> bool:
    from uniklab.hosts.service import local_is_dom0

    return local_is_dom0()


def _xen_checks() -> list[tuple[str, bool, str, str]]:
    from uniklab.backends.xen_doctor import doctor
    from uniklab.executor import local

    return [(c.name, c.ok, c.detail, c.fix) for c in doctor(local)]


def _net_admin() -> bool:
    """Root, or CAP_NET_ADMIN in the effective set (bridges, taps, namespaces)."""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


@dataclass(frozen=True)
class Machine:
    """What the checks read of the machine (each a function, so a test can stand in)."""

    cache: Path  # where the KVM probe's verdict lives (machine-wide: hostinfo.choose_accel)
    which: Callable[[str], str | None] = shutil.which
    exists: Callable[[Path], bool] = Path.exists
    kvm_access: Callable[[], bool] = field(default=lambda: os.access(KVM, os.R_OK | os.W_OK))
    accel: Callable[[], tuple[str, str]] = _accel
    host_kernel: Callable[[], Path] = _host_kernel
    unreadable_kernels: Callable[[], list[Path]] = _unreadable_kernels
    net_admin: Callable[[], bool] = _net_admin
    toolchains: Callable[[], list[str]] = _toolchains
    profiles: Callable[[], list[str]] = _profiles
    kernel_built: Callable[[str], bool] = _kernel_built
    dom0: Callable[[], bool] = _dom0
    xen_checks: Callable[[], list[tuple[str, bool, str, str]]] = _xen_checks


def _tool(
    m: Machine, feature: str, tool: str, package: str, *, required: bool, why: str = ""
) -> Finding:
    path = m.which(tool)
    if path:
        return Finding(feature, tool, OK, path)
    status = FAIL if required else WARN
    detail = f"not on PATH{f' ({why})' if why else ''}"
    return Finding(feature, tool, status, detail, f"apt-get install -y {package}")


def _qemu(m: Machine) -> Iterator[Finding]:
    f = "run on QEMU"
    yield _tool(m, f, "qemu-system-x86_64", "qemu-system-x86", required=True)
    enable = (
        "enable VT-x/AMD-V in the firmware (on a VM: nested virtualisation), then "
        "modprobe kvm_intel  # or kvm_amd"
    )
    if not m.exists(KVM):
        yield Finding(f, "/dev/kvm", WARN, "missing: guests run under TCG (slower)", enable)
        return
    if not m.kvm_access():
        yield Finding(
            f,
            "/dev/kvm",
            WARN,
            "present, not readable and writable by this user: guests run under TCG",
            "usermod -aG kvm $USER  # then log in again",
        )
        return
    yield Finding(f, "/dev/kvm", OK, "present")
    if m.which("qemu-system-x86_64") is None:
        return  # the probe boots QEMU
    try:
        accel, why = m.accel()
    except (UniklabError, OSError) as exc:
        accel, why = "tcg", str(exc)
    if accel == "kvm":
        yield Finding(f, "KVM runs guests", OK, why)
    elif why == "set by UNIKLAB_ACCEL":
        yield Finding(f, "KVM runs guests", OK, "not tried: UNIKLAB_ACCEL=tcg")
    else:
        yield Finding(
            f,
            "KVM runs guests",
            WARN,
            f"no, guests run under TCG (slower): {why}",
            "check nested virtualisation (cat /sys/module/kvm_*/parameters/nested; "
            "on the VM's host: modprobe kvm_intel nested=1); "
            f"rm {m.cache}/kvm-probe-* to probe again",
        )


def _bake(m: Machine) -> Iterator[Finding]:
    f = "bake"
    try:
        yield Finding(f, "readable host kernel", OK, str(m.host_kernel()))
    except UniklabError as exc:
        unreadable = m.unreadable_kernels()
        fix = (
            f"chmod 0644 {' '.join(map(str, unreadable))}"
            if unreadable
            else "apt-get install -y linux-image-amd64"
        )
        yield Finding(f, "readable host kernel", FAIL, str(exc), fix)
    if m.which("musl-gcc"):
        yield Finding(f, "musl-gcc", OK, "the guest init is built with musl (~80 KB)")
    elif m.which("gcc"):
        yield Finding(
            f, "musl-gcc", WARN, "not found: gcc builds a larger static init",
            "apt-get install -y musl-tools",
        )  # fmt: skip
    else:
        yield Finding(
            f, "musl-gcc", FAIL, "no C compiler for the guest init", "apt-get install -y musl-tools"
        )
    yield _tool(m, f, "lz4", "lz4", required=True, why="initramfs compression")
    yield _tool(m, f, "mkfs.erofs", "erofs-utils", required=False, why="bake --root erofs")
    yield _tool(m, f, "cpio", "cpio", required=False, why="to list an image's initramfs")


def _networks(m: Machine) -> Iterator[Finding]:
    f = "networks (--net)"
    if m.net_admin():
        yield Finding(f, "root or CAP_NET_ADMIN", OK, "bridges, taps and namespaces allowed")
    else:
        yield Finding(
            f,
            "root or CAP_NET_ADMIN",
            WARN,
            "not root: no bridged networks (user-mode networking, -p, still works)",
            "sudo uniklab net create …  (or run uniklab as root)",
        )
    yield _tool(m, f, "dnsmasq", "dnsmasq-base", required=False, why="DHCP on networks")
    yield _tool(m, f, "socat", "socat", required=False, why="the guests' clock on networks")


def _hosts(m: Machine) -> Iterator[Finding]:
    yield _tool(m, "Xen hosts", "ssh", "openssh-client", required=False, why="--host")
    yield _tool(m, "probes", "redis-cli", "redis-tools", required=False, why="uniklab demo")


def _rumprun(m: Machine) -> Iterator[Finding]:
    f = "rumprun images"
    for tool, package in (
        ("gcc", "build-essential"),
        ("make", "build-essential"),
        ("git", "git"),
        ("genisoimage", "genisoimage"),
    ):
        yield _tool(m, f, tool, package, required=False, why="the rumprun toolchain")
    from uniklab.toolchain.rumprun import XEN_HEADER

    if m.exists(XEN_HEADER):
        yield Finding(f, "libxen-dev", OK, str(XEN_HEADER))
    else:
        yield Finding(
            f, "libxen-dev", WARN, f"no {XEN_HEADER} (the xen toolchain)",
            "apt-get install -y libxen-dev",
        )  # fmt: skip
    built = m.toolchains()
    for platform in ("hw", "xen"):
        if platform in built:
            yield Finding(f, f"toolchain {platform}", OK, "built")
        else:
            flag = "" if platform == "hw" else " --platform xen"
            yield Finding(
                f, f"toolchain {platform}", WARN, "not built (minutes, once per machine)",
                f"uniklab toolchain build rumprun{flag}",
            )  # fmt: skip


def _kernel(m: Machine) -> Iterator[Finding]:
    f = "specialised kernel"
    from uniklab.kernel.build import SOURCE_PACKAGE, SOURCE_TARBALL

    deps = (
        f"apt-get install -y {SOURCE_PACKAGE} bc bison flex libelf-dev libssl-dev build-essential"
    )
    if not m.exists(SOURCE_TARBALL):
        yield Finding(f, SOURCE_PACKAGE, WARN, f"no {SOURCE_TARBALL}", deps)
        return
    yield Finding(f, SOURCE_PACKAGE, OK, str(SOURCE_TARBALL))
    for profile in m.profiles():
        try:
            built = m.kernel_built(profile)
        except UniklabError as exc:
            yield Finding(f, f"kernel {profile}", WARN, str(exc), deps)
            continue
        if built:
            yield Finding(f, f"kernel {profile}", OK, "built")
        else:
            yield Finding(
                f, f"kernel {profile}", WARN, "not built (minutes, once per machine)",
                f"uniklab kernel build --profile {profile}",
            )  # fmt: skip


def _xen_here(m: Machine) -> Iterator[Finding]:
    if not m.dom0():
        return
    for name, ok, detail, fix in m.xen_checks():
        yield Finding("run on Xen (this dom0)", name, OK if ok else FAIL, detail, fix)


SECTIONS = (_qemu, _bake, _networks, _hosts, _rumprun, _kernel, _xen_here)


def check(machine: Machine) -> list[Finding]:
    """Every finding, feature by feature."""
    return [finding for section in SECTIONS for finding in section(machine)]


def failed(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == FAIL]
