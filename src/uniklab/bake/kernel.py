"""Choosing the kernel an image boots: the host's Debian kernel, or a given file."""

from __future__ import annotations

import os
import re
from pathlib import Path

from uniklab.errors import BakeError

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
