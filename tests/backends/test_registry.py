"""Backends are chosen by name, in one place: the registry (and nowhere an if/elif)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uniklab.backends import registry
from uniklab.backends.qemu import QemuBackend
from uniklab.backends.xen import XenBackend
from uniklab.cli.main import main
from uniklab.errors import NotFoundError
from uniklab.executor import local
from uniklab.hosts.inventory import Host


def test_each_registered_backend_declares_itself_under_its_name() -> None:
    assert registry.names() == ["qemu", "xen", "libvirt"]
    for name in registry.names():
        assert registry.get(name).name == name
    assert registry.get("kvm").name == "qemu"  # an alias, as kraftkit has it


def test_a_host_is_run_by_the_backend_its_inventory_entry_names() -> None:
    assert registry.for_host(Host(name="local", hypervisor="qemu")).name == "qemu"
    assert registry.for_host(Host(name="x", ssh="root@192.0.2.1", hypervisor="xen")).name == "xen"


def test_unknown_and_local_only_backends_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no backend 'vmware' \(known: qemu, xen, libvirt\)"):
        registry.get("vmware")
    remote = Host(name="far", ssh="root@192.0.2.1", hypervisor="qemu")
    ctx = registry.BackendContext(host=remote, executor=local, cache=tmp_path)
    with pytest.raises(NotFoundError, match="local only"):
        registry.create("qemu", ctx)


def test_factories_make_their_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIKLAB_ACCEL", "tcg")
    here = registry.BackendContext(host=Host(name="local", hypervisor="qemu"), executor=local,
                                   cache=tmp_path)  # fmt: skip
    assert isinstance(registry.create("qemu", here), QemuBackend)
    dom0 = Host(name="d", ssh="root@192.0.2.1", hypervisor="xen", labels={"vif-script": "v"})
    xen = registry.create("xen", registry.BackendContext(host=dom0, executor=local, cache=tmp_path))
    assert isinstance(xen, XenBackend) and xen.vif_script == "v"


def test_inventory_takes_only_known_hypervisors(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["host", "add", "h", "--ssh", "root@192.0.2.1", "--hypervisor", "vmware"]) == 2
    assert "'vmware' is not one of 'qemu', 'xen'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown hypervisor 'vmware'"):
        Host(name="h", ssh="root@192.0.2.1", hypervisor="vmware")


def test_local_doctor_judges_this_machine_by_its_hypervisor(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`host doctor local` on a QEMU machine asks about QEMU, not `xl`."""
    monkeypatch.setenv("UNIKLAB_ACCEL", "tcg")
    capsys.readouterr()
    rc = main(["host", "doctor", "local", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert "xl installed" not in checks
    assert checks["qemu-system-x86_64 installed"]["ok"]
    assert checks["acceleration"]["detail"].startswith("TCG")
    assert rc == (0 if all(c["ok"] for c in checks.values()) else 1)


def test_a_libvirt_host_is_served_in_its_drivers_flavour() -> None:
    # libvirt's Xen driver boots Xen's images on a bridge of the dom0; its QEMU driver
    # QEMU's, with user-mode networking.  Decided from the URI, before any connection.
    def host(uri: str) -> Host:
        return Host(name="h", ssh="root@192.0.2.1", hypervisor="libvirt", libvirt=uri)

    xen = registry.for_host(host("xen+libssh://root@192.0.2.1/system?sshauth=privkey"))
    qemu = registry.for_host(host("qemu+ssh://root@192.0.2.1/system"))
    assert (xen.name, xen.image_platform, xen.user_networking) == ("libvirt", "xen", False)
    assert (qemu.name, qemu.image_platform, qemu.user_networking) == ("libvirt", "qemu", True)
    assert registry.for_host(Host(name="l", hypervisor="libvirt", libvirt="qemu:///system")) is qemu
