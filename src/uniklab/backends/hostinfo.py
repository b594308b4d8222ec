"""Facts about this machine that the QEMU backend needs: the TSC rate, KVM usability."""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from uniklab import buildcache
from uniklab.errors import CommandError
from uniklab.executor import local

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"


@functools.cache
def tsc_khz() -> int | None:
    """The host TSC frequency in kHz, which a TCG guest's TSC also runs at.

    Handed to the guest as ``tsc_early_khz``: without it Debian's kernel under TCG fails to
    calibrate against the PIT and hangs at random early in boot.
    """
    try:
        text = local.run(["dmesg"], timeout=5).stdout
        m = re.findall(
            r"tsc: (?:Refined TSC clocksource calibration|Detected): ([0-9.]+) MHz", text
        )
        if m:
            return int(float(m[-1]) * 1000)
    except CommandError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return None


def _probe_bios() -> bytes:
    """A 64 KiB firmware whose reset vector writes 0x21 to isa-debug-exit and halts."""
    image = bytearray(b"\xf4" * 65536)
    code = bytes([0xB0, 0x21, 0xE6, 0xF4, 0xF4])  # mov al,0x21; out 0xf4,al; hlt
    image[0xFFF0 : 0xFFF0 + len(code)] = code
    return bytes(image)


def kvm_usable(kernel: Path | None, *, timeout: float = 10.0) -> tuple[bool, str]:
    """Prove KVM runs guests, within a timeout.

    ``/dev/kvm`` existing is not enough: under broken nested virtualisation QEMU aborts on
    MSR writes or the guest hangs.  Two steps: real-mode firmware that must exit QEMU with
    a known code, then (if a kernel is given) a Linux boot that must reach its
    no-root-filesystem panic.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="uniklab-kvm-") as tmp:
        bios = Path(tmp) / "probe.bin"
        bios.write_bytes(_probe_bios())
        base = [
            QEMU,
            "-M",
            "microvm",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-m",
            "64",
        ]
        try:
            r = local.run(
                [*base, "-bios", bios, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                timeout=timeout,
                check=False,
            )
        except CommandError as exc:
            return False, f"firmware probe: {exc}"
        if r.returncode != (0x21 << 1) | 1:
            return False, f"firmware probe exited {r.returncode}: {r.stderr.strip()[:200]}"
        if kernel is None:
            return True, "firmware probe ran"
        console = Path(tmp) / "console.log"
        try:
            local.run(
                [
                    *base,
                    "-kernel",
                    kernel,
                    "-serial",
                    f"file:{console}",
                    "-append",
                    "console=ttyS0 panic=-1 reboot=t",
                ],
                timeout=timeout,
                check=False,
            )
        except CommandError as exc:
            return False, f"kernel probe: {exc}"
        text = console.read_text(errors="replace") if console.exists() else ""
        if "Kernel panic" in text or "VFS: Unable to mount root" in text:
            return True, "kernel booted to its root-mount panic"
        return False, "kernel probe did not reach user space"


def _probe_cache() -> Path:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return buildcache.root("facts", "UNIKLAB_FACTS_CACHE") / f"kvm-probe-{boot_id}"


def is_linux_bzimage(path: Path) -> bool:
    """A Linux x86 boot image (its setup header's "HdrS" at 0x202): what the probe boots."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0x202)
            return fh.read(4) == b"HdrS"
    except OSError:
        return False


def probe_kernel(kernel: Path | None, candidates: Sequence[Path] = ()) -> Path | None:
    """A Linux kernel the KVM probe can boot to its root-mount panic: ``kernel`` if it is
    one (a rumprun unikernel is not: it never panics so), else the first readable one of
    ``candidates`` (the host's, uniklab's specialised builds)."""
    for k in [*([kernel] if kernel is not None else []), *candidates]:
        if is_linux_bzimage(k):
            return k
    return None


def _kernel_candidates(boot: Path = Path("/boot")) -> list[Path]:
    """Linux kernels this machine has, for the probe: the running one's, then any other in
    ``boot`` (a machine may run a kernel it has no file of, as under another hypervisor,
    beside the distribution's), then uniklab's own builds."""
    running = boot / f"vmlinuz-{os.uname().release}"
    others = sorted((k for k in boot.glob("vmlinuz-*") if k != running), reverse=True)
    try:
        cached = sorted(buildcache.root("kernels", "UNIKLAB_KERNEL_CACHE").glob("*/bzImage"))
    except OSError:  # another user's cache
        cached = []
    return [running, *others, *cached]


def choose_accel(kernel: Path | None) -> tuple[str, str]:
    """'kvm' or 'tcg', and why.  UNIKLAB_ACCEL overrides; the probe is cached per boot of
    this machine, for every home (``UNIKLAB_FACTS_CACHE``): a fresh home does not pay the
    probe's seconds again.

    KVM counts only once a Linux kernel was seen to boot under it (here KVM starts real-mode
    firmware and then hangs every kernel, rumprun's included): the probe boots ``kernel`` if
    it is a Linux kernel, else another one this machine has.  With none to boot, the
    firmware probe's "yes" proves nothing: TCG, for this command only (never cached: a
    kernel may turn up)."""
    forced = os.environ.get("UNIKLAB_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "set by UNIKLAB_ACCEL"
    marker = _probe_cache()
    try:
        ok_text = marker.read_text()
        return ("kvm" if ok_text.startswith("kvm") else "tcg"), ok_text.split(":", 1)[-1].strip()
    except OSError:
        pass  # not probed yet this boot (or the cache is not ours to read)
    linux = probe_kernel(kernel, _kernel_candidates())
    ok, why = kvm_usable(linux)
    if ok and linux is None:
        why = f"{why}, but no Linux kernel to prove KVM with (UNIKLAB_ACCEL=kvm to trust it)"
        log.info("accelerator: tcg (%s)", why)
        return "tcg", why
    accel = "kvm" if ok else "tcg"
    log.info("accelerator: %s (%s)", accel, why)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{accel}: {why}")
    except OSError as exc:  # e.g. a user whose HOME's cache is another user's
        log.info("the KVM probe's verdict is not cached (%s)", exc)
    return accel, why


def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB: {"MemTotal": …, "MemAvailable": …}."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            out[key] = int(value[0])
    return out
