"""Which kernel the KVM probe boots, and which verdicts are cached (no guest boots here:
the probe itself is stubbed, as on this machine it takes seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uniklab.backends import hostinfo


def _bzimage(path: Path) -> Path:
    data = bytearray(1024)
    data[0x202:0x206] = b"HdrS"
    path.write_bytes(bytes(data))
    return path


def test_a_rumprun_unikernel_is_not_what_the_probe_boots(tmp_path: Path) -> None:
    rumprun = tmp_path / "kernel-qemu"
    rumprun.write_bytes(b"\x7fELF" + bytes(1024))
    linux = _bzimage(tmp_path / "bzImage")
    assert hostinfo.probe_kernel(rumprun, [tmp_path / "missing", linux]) == linux
    assert hostinfo.probe_kernel(linux) == linux
    assert hostinfo.probe_kernel(rumprun, [tmp_path / "missing"]) is None


@pytest.mark.parametrize(
    ("kernel_found", "verdict", "cached"),
    [(True, True, "kvm"), (True, False, "tcg"), (False, False, "tcg"), (False, True, None)],
)
def test_kvm_counts_only_when_a_linux_kernel_proved_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kernel_found: bool,
    verdict: bool,
    cached: str | None,
) -> None:
    monkeypatch.delenv("UNIKLAB_ACCEL", raising=False)
    monkeypatch.setenv("UNIKLAB_FACTS_CACHE", str(tmp_path / "cache"))
    linux = _bzimage(tmp_path / "bzImage") if kernel_found else None
    monkeypatch.setattr(hostinfo, "_kernel_candidates", lambda: [linux] if linux else [])
    seen: list[Path | None] = []

    def probe(kernel: Path | None) -> tuple[bool, str]:
        seen.append(kernel)
        return verdict, "stub"

    monkeypatch.setattr(hostinfo, "kvm_usable", probe)
    accel, why = hostinfo.choose_accel(tmp_path / "not-a-kernel")
    # the firmware's word alone is not taken: here KVM runs it and hangs every kernel
    assert accel == ("kvm" if verdict and kernel_found else "tcg") and seen == [linux]
    assert ("no Linux kernel to prove KVM with" in why) == (verdict and not kernel_found)
    marker = hostinfo._probe_cache()
    assert (marker.read_text().split(":")[0] if marker.exists() else None) == cached


def test_every_kernel_in_boot_is_a_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine may run a kernel it has no file of (here: the host's hypervisor boots it)
    beside the distribution's in /boot: that one proves KVM as well."""
    monkeypatch.setenv("UNIKLAB_KERNEL_CACHE", str(tmp_path / "kernels"))
    (tmp_path / "kernels" / "k1").mkdir(parents=True)
    build = _bzimage(tmp_path / "kernels" / "k1" / "bzImage")
    boot = tmp_path / "boot"
    boot.mkdir()
    debian = _bzimage(boot / "vmlinuz-distro")
    (boot / "config-distro").write_text("")
    running = boot / f"vmlinuz-{os.uname().release}"
    assert hostinfo._kernel_candidates(boot) == [running, debian, build]
    assert hostinfo.probe_kernel(None, hostinfo._kernel_candidates(boot)) == debian
