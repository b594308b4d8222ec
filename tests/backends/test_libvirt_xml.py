"""The domain XML of a uniklab guest, checked by libvirt's own schema (virt-xml-validate,
from libvirt-clients) and read back: labels, kernel boot, console log, each NIC kind."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from uniklab.backends import libvirt_xml as lx
from uniklab.net.attachment import Attachment

USER = Attachment(kind="user", mac="52:54:00:12:34:56", forwards=((40001, 6379), (40002, 80)))
BRIDGED = Attachment(kind="host-bridge", mac="00:11:22:33:44:55", bridge="xenbr0")
TAP = Attachment(kind="bridge", mac="52:54:00:00:00:02", tap="ukt7", bridge="ukb1", net="lab")


def _spec(*nics: Attachment, kvm: bool = False) -> lx.DomainSpec:
    return lx.DomainSpec(
        name="redis-1",
        memory_mb=64,
        vcpus=1,
        kernel=lx.Volume("/var/lib/libvirt/images/uniklab/sha256-aa"),
        initrd=lx.Volume("/var/lib/libvirt/images/uniklab/sha256-bb"),
        cmdline="console=ttyS0 reboot=t panic=-1 quiet uniklab.config=e30",
        console_log="/var/log/libvirt/qemu/redis-1.console.log",
        labels=lx.Labels(owner="0123456789abcdef", key="redis-1", image="redis:latest"),
        kvm=kvm,
        nics=nics,
    )


def _valid(xml: str, tmp_path: Path) -> None:
    tool = shutil.which("virt-xml-validate")
    assert tool, "virt-xml-validate (libvirt-clients) is installed by `make deps`"
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    r = subprocess.run([tool, str(path), "domain"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("nics", [(USER,), (BRIDGED,), (TAP, BRIDGED), ()])
@pytest.mark.parametrize("kvm", [False, True])
def test_each_shape_is_valid_for_libvirt(
    nics: tuple[Attachment, ...], kvm: bool, tmp_path: Path
) -> None:
    _valid(lx.render(_spec(*nics, kvm=kvm)), tmp_path)


def test_what_the_domain_says() -> None:
    root = ET.fromstring(lx.render(_spec(USER)))
    assert root.get("type") == "qemu" and root.findtext("name") == "redis-1"
    assert root.findtext("os/kernel", "").endswith("sha256-aa")
    assert root.findtext("os/cmdline", "").startswith("console=ttyS0 ")
    assert root.find("os/type").get("machine") == "pc"  # type: ignore[union-attr]
    assert root.find("devices/serial/log").get("file").endswith(".console.log")  # type: ignore[union-attr]
    off = {f.get("name") for f in root.iterfind("cpu/feature")}
    assert off == set(lx.TCG_CPU_OFF)
    args = [a.get("value") for a in root.iter(f"{{{lx.QEMU_NS}}}arg")]
    assert args == [
        "-netdev",
        "user,id=ukn0,hostfwd=tcp:127.0.0.1:40001-:6379,hostfwd=tcp:127.0.0.1:40002-:80",
        "-device",
        "virtio-net-pci,netdev=ukn0,mac=52:54:00:12:34:56",
    ]
    assert root.findall("devices/interface") == []


def test_bridged_nics_are_libvirt_interfaces_in_order() -> None:
    root = ET.fromstring(lx.render(_spec(TAP, BRIDGED, kvm=True)))
    ifaces = root.findall("devices/interface")
    assert [i.get("type") for i in ifaces] == ["ethernet", "bridge"]
    assert ifaces[0].find("target").get("dev") == "ukt7"  # type: ignore[union-attr]
    assert ifaces[1].find("source").get("bridge") == "xenbr0"  # type: ignore[union-attr]
    assert [i.find("mac").get("address") for i in ifaces] == [TAP.mac, BRIDGED.mac]  # type: ignore[union-attr]
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert root.find(f"{{{lx.QEMU_NS}}}commandline") is None


def test_labels_round_trip_through_the_metadata_element() -> None:
    root = ET.fromstring(lx.render(_spec()))
    element = root.find(f"metadata/{{{lx.NS}}}instance")
    assert element is not None
    # libvirt hands back the element alone, with its namespace declared on it.
    labels = lx.labels_of(ET.tostring(element, encoding="unicode"))
    assert labels == lx.Labels(owner="0123456789abcdef", key="redis-1", image="redis:latest")
    assert lx.labels_of("<instance/>") is None and lx.labels_of("not xml <") is None


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    bad = lx.render(_spec()).replace("<vcpu>1</vcpu>", "<vcpu>one</vcpu>")
    with pytest.raises(AssertionError):
        _valid(bad, tmp_path)
