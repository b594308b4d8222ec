"""A uniklab guest as libvirt domain XML.  The QEMU driver: direct kernel boot on a ``pc``
machine with virtio-pci NICs (libvirt does not drive QEMU's microvm), the serial console
on a pty that virtlogd also writes to a file.  The Xen (libxl) driver: a PV domain booted
from the same kernel and initramfs, its console on hvc0 (xenconsoled logs it), each NIC a
vif on a bridge of the dom0.  Both carry uniklab's labels in ``<metadata>``.  A NIC joins a
bridge of the host or a libvirt network there (``<interface type='network'>``).  A uniklab
network made on a libvirt host is an isolated libvirt network: its bridge, the host's
address on it, and libvirt's own dnsmasq for DHCP, with the owner's tag in ``<metadata>``.

Pure: no connection, so every shape is checked by libvirt's own schema in the tests
(``virt-xml-validate``).
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from uniklab.net.attachment import Attachment

NS = "urn:uniklab:instance:1"  # uniklab's element in each domain's <metadata>
NET_NS = "urn:uniklab:network:1"  # ... and in each network's
NS_PREFIX = "uniklab"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# TCG lacks these (the QEMU backend's `-cpu max,-erms,-fsrm` for the same reason).
TCG_CPU_OFF = ("erms", "fsrm")


@dataclass(frozen=True)
class Labels:
    """What ``<metadata>`` says of a domain: whose it is and what it runs."""

    owner: str  # base.owner_tag of the home
    key: str  # the instance's name, as Backend.key
    image: str = ""
    digest: str = ""


@dataclass(frozen=True)
class Volume:
    """A file of the image as the host's libvirt sees it (a storage volume's path)."""

    path: str


@dataclass(frozen=True)
class DomainSpec:
    name: str
    memory_mb: int
    vcpus: int
    kernel: Volume
    initrd: Volume
    cmdline: str
    console_log: str
    labels: Labels
    kvm: bool = False
    nics: tuple[Attachment, ...] = field(default_factory=tuple)
    xen: bool = False  # a PV domain of the libxl driver (console_log: unused, xenconsoled's)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _user_nic_args(index: int, nic: Attachment) -> list[str]:
    """QEMU's own words for a user-mode NIC with published ports: libvirt's slirp
    ``<interface type='user'>`` cannot forward ports (only its passt backend can)."""
    netdev = f"user,id=ukn{index}"
    netdev += "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in nic.forwards)
    return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=ukn{index},mac={nic.mac}"]


def _host_nic(devices: ET.Element, nic: Attachment) -> ET.Element:
    """A NIC on the host's libvirt network ``nic.net``, or else on its bridge."""
    if nic.net:
        iface = _sub(devices, "interface", type="network")
        _sub(iface, "source", network=nic.net)
    else:
        iface = _sub(devices, "interface", type="bridge")
        _sub(iface, "source", bridge=str(nic.bridge))
    return iface


def _interface(devices: ET.Element, nic: Attachment) -> None:
    if nic.kind == "host-bridge":
        iface = _host_nic(devices, nic)
    elif nic.kind == "bridge":
        # The tap uniklab made on its network's bridge: libvirt uses it as it is.
        iface = _sub(devices, "interface", type="ethernet")
        _sub(iface, "target", dev=str(nic.tap), managed="no")
    else:
        raise ValueError(f"no libvirt interface for a {nic.kind} NIC")
    _sub(iface, "mac", address=nic.mac)
    _sub(iface, "model", type="virtio")


def _head(spec: DomainSpec, domain_type: str) -> ET.Element:
    """The domain element with its name, uniklab's labels, memory and vCPUs."""
    ET.register_namespace(NS_PREFIX, NS)
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.Element("domain", type=domain_type)
    _sub(dom, "name", spec.name)
    meta = _sub(dom, "metadata")
    inst = _sub(meta, f"{{{NS}}}instance")
    for tag in ("owner", "key", "image", "digest"):
        _sub(inst, f"{{{NS}}}{tag}", getattr(spec.labels, tag))
    _sub(dom, "memory", str(spec.memory_mb), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    return dom


def _render_xen(spec: DomainSpec) -> str:
    """A PV domain, as xl's config of the same image says it (backends/xen_config.py)."""
    dom = _head(spec, "xen")
    os_ = _sub(dom, "os")
    _sub(os_, "type", "linux", arch="x86_64", machine="xenpv")
    _sub(os_, "kernel", spec.kernel.path)
    _sub(os_, "initrd", spec.initrd.path)
    _sub(os_, "cmdline", spec.cmdline)
    _sub(dom, "clock", offset="utc")
    # The init reboots when its app ends (reboot=t): the domain ends with it.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    devices = _sub(dom, "devices")
    for nic in spec.nics:
        if nic.kind != "host-bridge":
            raise ValueError(f"a Xen domain's NIC joins a bridge of its dom0, not a {nic.kind} one")
        iface = _host_nic(devices, nic)
        _sub(iface, "mac", address=nic.mac)
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="xen", port="0")
    _sub(devices, "memballoon", model="xen")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def render(spec: DomainSpec) -> str:
    if spec.xen:
        return _render_xen(spec)
    dom = _head(spec, "kvm" if spec.kvm else "qemu")
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_, "kernel", spec.kernel.path)
    _sub(os_, "initrd", spec.initrd.path)
    _sub(os_, "cmdline", spec.cmdline)
    _sub(_sub(dom, "features"), "acpi")
    if spec.kvm:
        _sub(dom, "cpu", mode="host-passthrough", check="none")
    else:
        cpu = _sub(dom, "cpu", mode="maximum", check="none")
        for feature in TCG_CPU_OFF:
            _sub(cpu, "feature", policy="disable", name=feature)
    _sub(dom, "clock", offset="utc")
    # The init reboots when its app ends (reboot=t): the domain ends with it.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    devices = _sub(dom, "devices")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=spec.console_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    user_args: list[str] = []
    for i, nic in enumerate(spec.nics):
        if nic.kind == "user":
            user_args += _user_nic_args(i, nic)
        else:
            _interface(devices, nic)
    if user_args:
        cmd = _sub(dom, f"{{{QEMU_NS}}}commandline")
        for arg in user_args:
            _sub(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def labels_of(metadata_xml: str) -> Labels | None:
    """The labels of a domain's uniklab metadata element (as libvirt returns it), or None
    when it is not uniklab's."""
    try:
        root = ET.fromstring(metadata_xml)
    except ET.ParseError:
        return None

    def text(tag: str) -> str:
        el = root.find(tag) if root.find(tag) is not None else root.find(f"{{{NS}}}{tag}")
        return (el.text or "") if el is not None else ""

    owner, key = text("owner"), text("key")
    if not owner or not key:
        return None
    return Labels(owner=owner, key=key, image=text("image"), digest=text("digest"))


@dataclass(frozen=True)
class NetworkSpec:
    """A uniklab network as a libvirt network of its host."""

    name: str
    subnet: ipaddress.IPv4Network
    owner: str  # base.owner_tag of the home that made it

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's address on it: the subnet's first."""
        return next(self.subnet.hosts())


def render_network(spec: NetworkSpec) -> str:
    """An isolated network (no ``<forward>``: its traffic stays on its host), on a bridge
    libvirt names, with libvirt's dnsmasq leasing the rest of the subnet."""
    ET.register_namespace(NS_PREFIX, NET_NS)
    net = ET.Element("network")
    _sub(net, "name", spec.name)
    _sub(_sub(_sub(net, "metadata"), f"{{{NET_NS}}}network"), f"{{{NET_NS}}}owner", spec.owner)
    _sub(net, "bridge", stp="off", delay="0")
    ip = _sub(net, "ip", address=str(spec.gateway), prefix=str(spec.subnet.prefixlen))
    hosts = list(spec.subnet.hosts())
    _sub(_sub(ip, "dhcp"), "range", start=str(hosts[1]), end=str(hosts[-1]))
    ET.indent(net)
    return ET.tostring(net, encoding="unicode")


def network_owner(network_xml: str) -> str | None:
    """The owner tag of a network uniklab made (as libvirt describes it), else None."""
    try:
        el = ET.fromstring(network_xml).find(f"metadata/{{{NET_NS}}}network/{{{NET_NS}}}owner")
    except ET.ParseError:
        return None
    return el.text if el is not None and el.text else None
