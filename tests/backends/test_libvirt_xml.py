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
ON_NET = Attachment(kind="host-bridge", mac="52:54:00:00:00:03", bridge="virbr1", net="lvnet")


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


def _valid(xml: str, tmp_path: Path, schema: str = "domain") -> None:
    tool = shutil.which("virt-xml-validate")
    assert tool, "virt-xml-validate (libvirt-clients) is installed by `make deps`"
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    r = subprocess.run([tool, str(path), schema], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("nics", [(USER,), (BRIDGED,), (TAP, BRIDGED), (ON_NET,), ()])
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


def _xen_spec(*nics: Attachment) -> lx.DomainSpec:
    return lx.DomainSpec(
        name="redis-1",
        memory_mb=128,
        vcpus=1,
        kernel=lx.Volume("/var/lib/libvirt/images/uniklab/sha256-aa"),
        initrd=lx.Volume("/var/lib/libvirt/images/uniklab/sha256-bb"),
        cmdline="console=hvc0 reboot=t panic=-1 quiet uniklab.config=e30",
        console_log="/var/log/xen/console/guest-redis-1.log",
        labels=lx.Labels(owner="0123456789abcdef", key="redis-1"),
        nics=nics,
        xen=True,
    )


@pytest.mark.parametrize("nics", [(BRIDGED,), (BRIDGED, BRIDGED), ()])
def test_a_xen_pv_domain_is_valid_for_libvirt(nics: tuple[Attachment, ...], tmp_path: Path) -> None:
    _valid(lx.render(_xen_spec(*nics)), tmp_path)


def test_a_xen_domain_boots_pv_on_the_dom0s_bridge() -> None:
    root = ET.fromstring(lx.render(_xen_spec(BRIDGED)))
    assert root.get("type") == "xen"
    os_type = root.find("os/type")
    assert os_type is not None and (os_type.text, os_type.get("machine")) == ("linux", "xenpv")
    assert root.findtext("os/cmdline", "").startswith("console=hvc0 ")
    [iface] = root.findall("devices/interface")
    assert iface.get("type") == "bridge" and iface.find("model") is None  # netfront
    assert iface.find("source").get("bridge") == "xenbr0"  # type: ignore[union-attr]
    assert iface.find("mac").get("address") == BRIDGED.mac  # type: ignore[union-attr]
    assert root.find("devices/console/target").get("type") == "xen"  # type: ignore[union-attr]
    # Nothing of QEMU's: no machine type, CPU model, serial port or QEMU arguments.
    assert root.find("cpu") is None and root.find("devices/serial") is None
    assert root.find(f"{{{lx.QEMU_NS}}}commandline") is None
    assert lx.labels_of(ET.tostring(root.find("metadata")[0]).decode()) == lx.Labels(  # type: ignore[index]
        owner="0123456789abcdef", key="redis-1"
    )


@pytest.mark.parametrize("nic", [USER, TAP])
def test_a_xen_domain_has_no_user_or_tap_nics(nic: Attachment) -> None:
    with pytest.raises(ValueError, match="bridge of its dom0"):
        lx.render(_xen_spec(nic))


def test_a_nic_on_a_libvirt_network_names_the_network(tmp_path: Path) -> None:
    for xen in (False, True):
        spec = _spec(ON_NET, BRIDGED) if not xen else _xen_of(_spec(ON_NET, BRIDGED))
        root = ET.fromstring(lx.render(spec))
        ifaces = root.findall("devices/interface")
        assert [i.get("type") for i in ifaces] == ["network", "bridge"]
        assert ifaces[0].find("source").get("network") == "lvnet"  # type: ignore[union-attr]
        assert ifaces[0].find("mac").get("address") == ON_NET.mac  # type: ignore[union-attr]
        _valid(lx.render(spec), tmp_path)


def _xen_of(spec: lx.DomainSpec) -> lx.DomainSpec:
    import dataclasses

    return dataclasses.replace(spec, xen=True, cmdline="console=hvc0")


def test_a_uniklab_network_as_a_libvirt_network(tmp_path: Path) -> None:
    import ipaddress

    spec = lx.NetworkSpec("lvnet", ipaddress.IPv4Network("10.78.0.0/24"), "0123456789abcdef")
    xml = lx.render_network(spec)
    _valid(xml, tmp_path, "network")
    root = ET.fromstring(xml)
    assert root.find("forward") is None  # isolated: its traffic stays on its host
    ip = root.find("ip")
    assert ip is not None and (ip.get("address"), ip.get("prefix")) == ("10.78.0.1", "24")
    rng = root.find("ip/dhcp/range")
    assert rng is not None and (rng.get("start"), rng.get("end")) == ("10.78.0.2", "10.78.0.254")
    assert lx.network_owner(xml) == "0123456789abcdef"
    assert lx.network_owner("<network><name>default</name></network>") is None
    assert lx.network_owner("not xml") is None
