"""`uniklab doctor`: each prerequisite judged, each failure with its fix; the machine is a
stand-in (``doctor.Machine``), so nothing here depends on what this one has.  And
`host doctor local` judges this machine by its hypervisor."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from uniklab import doctor
from uniklab.cli.main import main
from uniklab.doctor import FAIL, OK, WARN, Finding, Machine
from uniklab.errors import BakeError


def everything(tmp_path: Path) -> Machine:
    """A machine that has it all."""
    return Machine(
        cache=tmp_path,
        which=lambda tool: f"/usr/bin/{tool}",
        exists=lambda path: True,
        kvm_access=lambda: True,
        accel=lambda: ("kvm", "firmware probe ran"),
        host_kernel=lambda: Path("/boot/vmlinuz-6.1.0-test-amd64"),
        unreadable_kernels=lambda: [],
        net_admin=lambda: True,
        toolchains=lambda: ["hw", "xen"],
        profiles=lambda: ["microvm", "xen"],
        kernel_built=lambda profile: True,
        dom0=lambda: False,
        xen_checks=lambda: [],
    )


def one(findings: list[Finding], check: str) -> Finding:
    [found] = [f for f in findings if f.check == check]
    return found


def without(*tools: str) -> Callable[[str], str | None]:
    return lambda tool: None if tool in tools else f"/usr/bin/{tool}"


def test_a_complete_machine(tmp_path: Path) -> None:
    findings = doctor.check(everything(tmp_path))
    assert {f.status for f in findings} == {OK}
    features = list(dict.fromkeys(f.feature for f in findings))
    assert features == [
        "run on QEMU", "bake", "networks (--net)", "Xen hosts", "probes", "rumprun images",
        "specialised kernel",
    ]  # fmt: skip
    for check in ("qemu-system-x86_64", "/dev/kvm", "KVM runs guests", "readable host kernel",
                  "musl-gcc", "lz4", "mkfs.erofs", "cpio", "root or CAP_NET_ADMIN", "dnsmasq",
                  "ssh", "redis-cli", "gcc", "make", "genisoimage", "libxen-dev",
                  "toolchain hw", "toolchain xen", "kernel microvm", "kernel xen"):  # fmt: skip
        one(findings, check)


@pytest.mark.parametrize(
    "change,check,status,fix",
    [
        ({"which": without("qemu-system-x86_64")}, "qemu-system-x86_64", FAIL,
         "apt-get install -y qemu-system-x86"),
        ({"which": without("lz4")}, "lz4", FAIL, "apt-get install -y lz4"),
        ({"which": without("musl-gcc", "gcc")}, "musl-gcc", FAIL, "apt-get install -y musl-tools"),
        ({"which": without("musl-gcc")}, "musl-gcc", WARN, "apt-get install -y musl-tools"),
        ({"which": without("mkfs.erofs")}, "mkfs.erofs", WARN, "apt-get install -y erofs-utils"),
        ({"which": without("dnsmasq")}, "dnsmasq", WARN, "apt-get install -y dnsmasq-base"),
        ({"which": without("redis-cli")}, "redis-cli", WARN, "apt-get install -y redis-tools"),
        ({"which": without("ssh")}, "ssh", WARN, "apt-get install -y openssh-client"),
        ({"which": without("genisoimage")}, "genisoimage", WARN, "apt-get install -y genisoimage"),
        ({"kvm_access": lambda: False}, "/dev/kvm", WARN, "usermod -aG kvm $USER"),
        ({"accel": lambda: ("tcg", "firmware probe exited 1")}, "KVM runs guests", WARN,
         "nested"),
        ({"net_admin": lambda: False}, "root or CAP_NET_ADMIN", WARN, "sudo uniklab"),
        ({"toolchains": lambda: ["hw"]}, "toolchain xen", WARN,
         "uniklab toolchain build rumprun --platform xen"),
        ({"kernel_built": lambda p: p != "xen"}, "kernel xen", WARN,
         "uniklab kernel build --profile xen"),
    ],
)  # fmt: skip
def test_each_problem_has_its_fix(
    change: dict[str, object], check: str, status: str, fix: str, tmp_path: Path
) -> None:
    findings = doctor.check(replace(everything(tmp_path), **change))  # type: ignore[arg-type]
    found = one(findings, check)
    assert found.status == status
    assert fix in found.fix
    assert [f for f in findings if f.status != OK and f.feature == found.feature] == [found]


def test_no_dev_kvm(tmp_path: Path) -> None:
    m = replace(everything(tmp_path), exists=lambda path: path != doctor.KVM)
    findings = doctor.check(m)
    kvm = one(findings, "/dev/kvm")
    assert kvm.status == WARN and "modprobe kvm_intel" in kvm.fix
    assert not [f for f in findings if f.check == "KVM runs guests"]  # nothing to probe


def test_the_probe_is_not_run_when_tcg_is_asked_for(tmp_path: Path) -> None:
    m = replace(everything(tmp_path), accel=lambda: ("tcg", "set by UNIKLAB_ACCEL"))
    assert one(doctor.check(m), "KVM runs guests").status == OK


def test_kernel_unreadable_or_missing(tmp_path: Path) -> None:
    def no_kernel() -> Path:
        raise BakeError("cannot read /boot/vmlinuz-6.1.0-test-amd64: readable by root only")

    m = replace(everything(tmp_path), host_kernel=no_kernel)
    unreadable = [Path("/boot/vmlinuz-6.1.0-test-amd64")]
    found = one(
        doctor.check(replace(m, unreadable_kernels=lambda: unreadable)), "readable host kernel"
    )
    assert found.status == FAIL and found.fix == "chmod 0644 /boot/vmlinuz-6.1.0-test-amd64"
    found = one(doctor.check(m), "readable host kernel")
    assert found.fix == "apt-get install -y linux-image-amd64"


def test_a_dom0_gets_the_xen_checks(tmp_path: Path) -> None:
    xen = [("xl installed", True, "xl found", ""), ("xenbr0", False, "missing", "brctl addbr")]
    m = replace(everything(tmp_path), dom0=lambda: True, xen_checks=lambda: xen)
    found = [f for f in doctor.check(m) if f.feature == "run on Xen (this dom0)"]
    assert [(f.check, f.status, f.fix) for f in found] == [
        ("xl installed", OK, ""),
        ("xenbr0", FAIL, "brctl addbr"),
    ]


# -- the verb ------------------------------------------------------------------------------


def _findings(*statuses: str) -> list[Finding]:
    return [
        Finding("bake", f"tool{i}", s, f"detail {i}", "" if s == OK else f"apt-get install -y t{i}")
        for i, s in enumerate(statuses)
    ]


def test_cli_table_and_exit(
    monkeypatch: pytest.MonkeyPatch, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(doctor, "check", lambda machine: _findings(OK, WARN))
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Feature", "Check", "Status", "Detail", "Fix"]
    assert lines[2].split() == ["bake", "tool1", "WARN", "detail", "1", "apt-get", "install",
                                "-y", "t1"]  # fmt: skip

    monkeypatch.setattr(doctor, "check", lambda machine: _findings(OK, FAIL, FAIL))
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: this machine lacks what 2 required check(s) need: tool1 (bake), tool2 (bake)"
    )


def test_cli_json(
    monkeypatch: pytest.MonkeyPatch, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(doctor, "check", lambda machine: _findings(OK, FAIL))
    assert main(["doctor", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows[1] == {
        "feature": "bake", "check": "tool1", "status": "FAIL", "detail": "detail 1",
        "fix": "apt-get install -y t1",
    }  # fmt: skip


def test_host_doctor_local_judges_by_hypervisor(
    monkeypatch: pytest.MonkeyPatch, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a machine that is not a dom0, `local` runs QEMU: QEMU's checks, not xl's."""
    monkeypatch.setenv("UNIKLAB_ACCEL", "tcg")  # no KVM probe
    monkeypatch.setattr("uniklab.hosts.service.local_is_dom0", lambda *a: False)
    main(["host", "doctor", "local", "--json"])  # its status depends on this machine
    names = [c["name"] for c in json.loads(capsys.readouterr().out)]
    assert "qemu-system-x86_64 installed" in names and "acceleration" in names
    assert not [n for n in names if "xl" in n]
