"""Choosing the kernel an image boots: the host's Debian kernel, uniklab's specialised
build (see ``uniklab.kernel``), or a given file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uniklab.errors import BakeError, UniklabError, UsageError

if TYPE_CHECKING:
    from uniklab.buildcache import Progress

BOOT = Path("/boot")
MODULES = Path("/lib/modules")


def _version_key(release: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", release)]


def needs_acpi(release: str, boot: Path = BOOT) -> bool:
    """Without VIRTIO_MMIO_CMDLINE_DEVICES a kernel finds microvm's devices only via ACPI."""
    try:
        config = (boot / f"config-{release}").read_text()
    except OSError:
        return True
    return "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y" not in config


def host_kernel(boot: Path = BOOT, modules: Path = MODULES) -> tuple[Path, str]:
    """The newest /boot/vmlinuz-* that has a matching module tree: (path, release)."""
    found = []
    for path in boot.glob("vmlinuz-*"):
        release = path.name.removeprefix("vmlinuz-")
        if (modules / release / "modules.dep").is_file():
            found.append((path, release))
    if not found:
        raise BakeError(
            "no usable kernel: need /boot/vmlinuz-* with /lib/modules/<release> "
            "(apt-get install linux-image-amd64)"
        )
    path, release = max(found, key=lambda pr: _version_key(pr[1]))
    if not os.access(path, os.R_OK):
        raise BakeError(
            f"cannot read {path}: Debian installs kernels readable by root only; "
            f"run 'sudo chmod 0644 {path}' once, or bake as root"
        )
    return path, release


HOST = "host"
SPECIALISED = "specialised"


@dataclass(frozen=True)
class KernelChoice:
    """The kernel an image boots, and what the baker must know about it.

    ``host``: the host's Debian kernel, with its modules in the initramfs.  ``specialised``:
    uniklab's own build (everything built in, no modules).  A path: a kernel file given by
    the user, also without modules (its ``.config``, if found beside it, tells about ACPI).
    """

    kind: str  # host | specialised | path
    path: Path
    release: str
    label: str  # what the image digest records: host, specialised:<profile>:<key>, path
    config: str | None = None  # the kernel's .config text, when known

    @property
    def wants_modules(self) -> bool:
        return self.kind == HOST

    @property
    def acpi(self) -> bool:
        """Whether QEMU's microvm must offer ACPI tables for the kernel to find its devices."""
        if self.config is None:
            return True
        return not has_option(self.config, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES")

    @property
    def boots_erofs(self) -> bool:
        """Whether the kernel mounts an erofs root on a virtio disk with no module loaded."""
        return self.config is not None and all(
            has_option(self.config, sym)
            for sym in ("CONFIG_EROFS_FS", "CONFIG_EROFS_FS_ZIP", "CONFIG_VIRTIO_BLK")
        )

    @property
    def platforms(self) -> list[str]:
        if self.kind == HOST or self.config is None:
            return ["qemu", "xen"]
        return ["qemu", "xen"] if has_option(self.config, "CONFIG_XEN_PV") else ["qemu"]


def choose_kernel(
    spec: str = HOST,
    *,
    progress: Progress | None = None,
    boot: Path = BOOT,
) -> KernelChoice:
    """Resolve ``host``, ``specialised[:PROFILE]`` (built now if this machine lacks it) or a
    kernel file path."""
    if spec == HOST:
        path, release = host_kernel(boot)
        try:
            config: str | None = (boot / f"config-{release}").read_text()
        except OSError:
            config = None
        return KernelChoice(HOST, path, release, HOST, config)
    if spec == SPECIALISED or spec.startswith(SPECIALISED + ":"):
        from uniklab.kernel import build as kbuild
        from uniklab.kernel import config as kconfig

        profile = spec.partition(":")[2] or kconfig.DEFAULT_PROFILE

        def say(
            step: str, /, *, done: int | None = None, total: int | None = None, detail: str = ""
        ) -> None:
            if progress:
                progress(f"kernel {profile}: {step}", done=done, total=total, detail=detail)

        entry = kbuild.build(profile, progress=say)
        return KernelChoice(
            SPECIALISED,
            entry.bzimage,
            entry.release,
            f"{SPECIALISED}:{profile}:{entry.key}",
            entry.config_path.read_text(),
        )
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UsageError(f"--kernel {spec!r}: not host, specialised[:PROFILE] or a kernel file")
    path = path.resolve()
    if not os.access(path, os.R_OK):
        raise BakeError(f"cannot read kernel {path}")
    config = None
    for cand in (path.with_name("config"), Path(f"{path}.config"), path.parent / ".config"):
        if cand.is_file():
            config = cand.read_text()
            break
    return KernelChoice("path", path, path.name, "path", config)


FAST_HINT = (
    "images for tests boot the host's kernel: `uniklab kernel build` (once per machine) "
    "makes their boots about 5x faster"
)
"""What the test faces say, once, when the specialised kernel is not built here."""


def fast_default() -> tuple[str, str | None] | None:
    """The kernel and root the test faces bake with on QEMU: the specialised kernel and an
    erofs root when this machine has the kernel built already (never built here: that takes
    many minutes), else None (the host's kernel; ``FAST_HINT`` says how to change that)."""
    from uniklab.kernel import build as kbuild
    from uniklab.kernel import config as kconfig

    try:
        entry = kbuild.cached(kconfig.DEFAULT_PROFILE)
    except UniklabError:  # no kernel source or compiler here: nothing is built either
        return None
    if entry is None:
        return None
    return SPECIALISED, "erofs"


def built_with(choice: str, symbol: str) -> bool:
    """Whether the specialised kernel an image records (``specialised:<profile>:<key>``)
    has ``symbol`` built in, by its build in this machine's cache (False: not known here)."""
    from uniklab.kernel import build as kbuild

    kind, _, rest = choice.partition(":")
    profile, _, key = rest.partition(":")
    if kind != SPECIALISED or not key or "/" in key:
        return False
    entry = kbuild.BuiltKernel(profile, key, kbuild.cache_root() / key)
    try:
        return entry.has(symbol)
    except OSError:
        return False


def has_option(config: str, symbol: str) -> bool:
    return f"\n{symbol}=y\n" in f"\n{config}\n"
