from __future__ import annotations

from pathlib import Path

import pytest

from uniklab.errors import NotFoundError, UsageError
from uniklab.net.attach import NicRequest
from uniklab.rumprun_args import parse
from uniklab.rumprun_compat import translate
from uniklab.state.store import NetworkRow

RUNBOOK = (
    "xen -N redis -I xen0,xenif,mac=00:11:22:33:44:55,bridge=xenbr0 "
    "-W xen0,inet,dhcp -d bin/redis-server.bin"
)


def _net(name: str, bridge: str) -> NetworkRow:
    return NetworkRow(
        name=name,
        state="ready",
        owner_pid=None,
        subnet="10.77.0.0/24",
        gateway="10.77.0.1",
        bridge=bridge,
        netns="ns",
        dhcp=True,
        made_bridge=True,
        made_netns=True,
        dnsmasq_pid=1,
        rundir="/x",
        created=0.0,
    )


def test_runbook_line_maps_to_the_bridge_network() -> None:
    t = translate(parse(RUNBOOK.split()), [])
    assert t.backend == "xen" and t.image == "bin/redis-server.bin"
    assert t.options.name == "redis"
    # on Xen the bridge is the dom0's own
    assert list(t.options.nets) == [NicRequest("xenbr0", "00:11:22:33:44:55", None, None)]
    qemu = RUNBOOK.replace("xen ", "qemu ", 1).replace("xenif", "vioif").replace(" -d", "")
    t = translate(parse(qemu.split()), [_net("lab", "xenbr0")])
    assert list(t.options.nets) == [NicRequest("lab", "00:11:22:33:44:55", None, None)]


def test_qemu_static_env_memory_args() -> None:
    argv = (
        "qemu -N r2 -M 128 -I n0,vioif,mac=00:11:22:33:44:66,bridge=xenbr0 "
        "-W n0,inet,static,10.77.0.20/24,10.77.0.1 -e A=b redis -- --maxmemory 10mb"
    )
    t = translate(parse(argv.split()), [_net("lab", "xenbr0")])
    assert t.backend == "qemu" and t.options.memory == 128
    assert t.options.env == {"A": "b"} and list(t.options.args) == ["--maxmemory", "10mb"]
    [nic] = t.options.nets
    assert (nic.ip, nic.gateway, nic.mac) == ("10.77.0.20/24", "10.77.0.1", "00:11:22:33:44:66")


@pytest.mark.parametrize(
    "argv,err,msg",
    [
        (
            "qemu -I n0,vioif,bridge=xenbr0 -W n0,inet,dhcp redis",
            NotFoundError,
            "no uniklab network uses bridge xenbr0",
        ),
        ("qemu -b ukl-no-such-disk.img,/data redis", UsageError, "no such file"),
        ("qemu -g -nographic redis", UsageError, "raw backend"),
        ("qemu -p redis", UsageError, "paused"),
        ("qemu -I n0,vioif,-net,tap -W n0,inet,dhcp redis", UsageError, "QEMU words"),
        ("qemu -I n0,vioif,mac=00:11:22:33:44:55 -W n0,inet,dhcp redis", UsageError, "bridge"),
    ],
)
def test_refused(argv: str, err: type[Exception], msg: str) -> None:
    with pytest.raises(err, match=msg):
        translate(parse(argv.split()), [])


def test_rumpruns_own_qemu_forms_are_mapped() -> None:
    """rumprun-packages' READMEs write -I with raw QEMU network words."""
    argv = ["kvm", "-M", "64", "-I", "if,vioif,-net user,hostfwd=tcp::6379-:6379",
            "-W", "if,inet,dhcp", "redis"]  # fmt: skip
    t = translate(parse(argv), [])
    assert t.options.nets == () and list(t.options.publish) == [(6379, 6379)]
    argv = ["qemu", "-I", "if,vioif,-net bridge,br=xenbr0", "-W", "if,inet,dhcp", "redis"]
    t = translate(parse(argv), [_net("lab", "xenbr0")])
    assert [n.network for n in t.options.nets] == ["lab"]


@pytest.mark.parametrize(
    ("qemu_net", "msg"),
    [
        ("-net user,hostfwd=udp::53-:53", "forwards TCP from 127.0.0.1 only"),
        ("-net user,hostfwd=tcp:0.0.0.0:80-:80", "forwards TCP from 127.0.0.1 only"),
        ("-net socket,listen=:1234", "QEMU network 'socket'"),
        ("-net tap,ifname=ukl-no-such-tap0,script=no", "not on a bridge here"),
        ("-net tap,ifname=tap0,script=/etc/qemu-ifup", "tap scripts"),
    ],
)
def test_rumpruns_qemu_forms_uniklab_cannot_honour(qemu_net: str, msg: str) -> None:
    argv = ["qemu", "-I", f"if,vioif,{qemu_net}", "-W", "if,inet,dhcp", "redis"]
    with pytest.raises(UsageError, match=msg):
        translate(parse(argv), [])


def test_a_static_address_on_user_mode_must_be_what_qemu_gives() -> None:
    base = ["qemu", "-I", "if,vioif,-net user", "-W"]
    ok = translate(parse([*base, "if,inet,static,10.0.2.15/24,10.0.2.2", "redis"]), [])
    assert ok.options.nets == ()
    with pytest.raises(UsageError, match=r"gives 10\.0\.2\.15"):
        translate(parse([*base, "if,inet,static,10.0.120.101/24", "redis"]), [])


def test_block_devices_are_rumpruns_b(tmp_path: Path) -> None:
    img = tmp_path / "pers.img"
    img.write_bytes(b"\0" * 1024)
    argv = ["qemu", "-b", f"{img},/backup", "-b", str(img), "redis"]
    t = translate(parse(argv), [])
    assert list(t.options.disks) == [(str(img), "/backup"), (str(img), "")]
