"""rumprun launcher command lines: the runbook's, each option, every rejection, and fuzzing."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniklab.errors import UsageError
from uniklab.rumprun_args import (
    RumprunBlock,
    RumprunIf,
    RumprunInvocation,
    RumprunNet,
    parse,
)

RUNBOOK = (
    "rumprun xen -N redis -I xen0,xenif,mac=00:11:22:33:44:55,bridge=xenbr0 "
    "-W xen0,inet,dhcp -d bin/redis-server.bin"
)


def p(line: str) -> RumprunInvocation:
    return parse(shlex.split(line))


def test_runbook_line() -> None:
    inv = p(RUNBOOK)
    assert inv == RumprunInvocation(
        platform="xen",
        image="bin/redis-server.bin",
        name="redis",
        interfaces=(RumprunIf("xen0", "xenif", mac="00:11:22:33:44:55", bridge="xenbr0"),),
        networks=(RumprunNet("xen0", "inet", "dhcp"),),
        destroy_on_poweroff=True,
    )
    assert inv.detached
    assert inv.effective_memory_mb == 64
    assert inv.effective_name == "redis"
    assert parse(inv.to_argv()) == inv


def test_full_path_program_name_and_sudo_prefix_words() -> None:
    line = "/opt/unikernels/rumprun/bin/rumprun -S -T /tmp/rr xen -N redis bin/redis-server.bin"
    inv = p(line)
    assert (inv.sudo, inv.tmpdir, inv.keep_tmpdir, inv.name) == (True, "/tmp/rr", True, "redis")


def test_static_ipv4_with_gateway() -> None:
    inv = p(
        "rumprun kvm -I qnet0,vioif,'-net tap,ifname=tap0,script=no' "
        "-W qnet0,inet,static,10.0.120.101/24,10.0.120.1 -M 128 app.bin -- --port 6379"
    )
    assert inv.platform == "kvm"
    assert inv.interfaces == (
        RumprunIf("qnet0", "vioif", qemu_args=("-net", "tap,ifname=tap0,script=no")),
    )
    assert inv.networks == (RumprunNet("qnet0", "inet", "static", "10.0.120.101/24", "10.0.120.1"),)
    assert inv.memory_mb == 128
    # Everything after APP is the guest's command line, verbatim.
    assert inv.app_args == ("--", "--port", "6379")


def test_static_ipv6_and_auto() -> None:
    inv = p(
        "rumprun qemu -I n,vioif,-net\\ user -W n,inet6,static,fd00::2/64,fd00::1 -W n,inet6,auto k"
    )
    assert inv.networks == (
        RumprunNet("n", "inet6", "static", "fd00::2/64", "fd00::1"),
        RumprunNet("n", "inet6", "auto"),
    )


def test_env_blocks_and_flags() -> None:
    inv = p(
        "rumprun qemu -ip -D 1234 -e A=1 -eB=x=y -b data.img,/data -b 'odd,name.img,' "
        "-b raw.img -g '-smp  2' -g -nographic -N web-1 -- k.bin a b"
    )
    assert inv.env == (("A", "1"), ("B", "x=y"))
    assert inv.blocks == (
        RumprunBlock("data.img", "/data"),
        RumprunBlock("odd,name.img"),
        RumprunBlock("raw.img"),
    )
    assert (inv.interactive, inv.paused, inv.gdb_port) == (True, True, 1234)
    assert inv.guest_args == ("-smp 2", "-nographic")
    assert not inv.detached
    assert (inv.image, inv.app_args) == ("k.bin", ("a", "b"))
    assert parse(inv.to_argv()) == inv


def test_old_style_n_creates_implicit_interfaces() -> None:
    inv = p("rumprun qemu -n inet,dhcp -n inet,static,10.0.0.2/8 -W _net0,inet6,auto k")
    assert [i.tag for i in inv.interfaces] == ["_net0", "_net1"]
    assert all(i.implicit and i.qemu_args == ("-net", "user") for i in inv.interfaces)
    assert [n.tag for n in inv.networks] == ["_net0", "_net1", "_net0"]
    assert parse(inv.to_argv()) == inv


def test_defaults_and_last_wins() -> None:
    inv = p("rumprun xen -M 32 -M 256 -N a -N b bin/app")
    assert (inv.memory_mb, inv.name) == (256, "b")
    assert p("rumprun xen bin/redis").effective_name == "rumprun-redis"
    assert p("rumprun xen -I x,xenif bin/a").interfaces == (RumprunIf("x", "xenif"),)


def test_xen_extra_vif_keys_and_mac_normalised() -> None:
    inv2 = p("rumprun xen -I x,xenif,script=vif-bridge,mac=02:AA:bb:cc:dd:ee,trusted k")
    assert inv2.interfaces[0].mac == "02:aa:bb:cc:dd:ee"
    assert inv2.interfaces[0].extra == (("script", "vif-bridge"), ("trusted", ""))
    assert parse(inv2.to_argv()) == inv2


@pytest.mark.parametrize(
    "line,needle",
    [
        ("rumprun", "missing platform"),
        ("rumprun -S", "missing platform"),
        ("rumprun -h xen k", "usage:"),
        ("rumprun -x xen k", "unknown script option -x"),
        ("rumprun -t", "needs an argument"),
        ("rumprun hvm k", "unknown platform 'hvm'"),
        ("rumprun iso k", "bakes an image"),
        ("rumprun ec2 k", "bakes an image"),
        ("rumprun xen", "missing APP"),
        ("rumprun xen -N redis", "missing APP"),
        ("rumprun xen -N redis -- ''", "missing APP"),
        ("rumprun xen -q k", "unknown xen option -q"),
        ("rumprun xen -h k", "unknown xen option -h"),
        ("rumprun xen -N", "needs an argument"),
        ("rumprun xen -g -smp k", "-g not supported on xen"),
        ("rumprun qemu -d k", "-d not supported on qemu/kvm"),
        ("rumprun kvm -d k", "-d not supported on qemu/kvm"),
        ("rumprun qemu -g ' ' k", "-g needs"),
        ("rumprun xen -N Redis k", "invalid guest name"),
        ("rumprun xen -N 'a b' k", "invalid guest name"),
        ("rumprun xen -M 64M k", "invalid memory"),
        ("rumprun xen -M abc k", "invalid memory"),
        ("rumprun xen -M 8 k", "out of range"),
        ("rumprun xen -M 0 k", "out of range"),
        ("rumprun qemu -D 0 k", "invalid gdb port"),
        ("rumprun qemu -D gdb k", "invalid gdb port"),
        ("rumprun xen -e NOEQUALS k", "invalid environment"),
        ("rumprun xen -e 1A=b k", "invalid environment"),
        ("rumprun xen -b ,/data k", "missing host path"),
        ("rumprun xen -b d.img,data k", "absolute guest path"),
        ("rumprun xen -I xen0 k", "iftag,ifbasename"),
        ("rumprun xen -I xen0, k", "iftag,ifbasename"),
        ("rumprun xen -I 0x,xenif k", "invalid interface tag"),
        ("rumprun xen -I a-b,xenif k", "invalid interface tag"),
        ("rumprun xen -I x,vioif k", "on xen the interface kind is 'xenif'"),
        ("rumprun qemu -I x,xenif k", "on qemu the interface kind is 'vioif'"),
        ("rumprun xen -I 'x,xen if' k", "invalid interface basename"),
        ("rumprun xen -I x,xenif -I x,xenif k", "given twice"),
        ("rumprun xen -I x,xenif,mac=00:11:22:33:44 k", "invalid MAC"),
        ("rumprun xen -I x,xenif,mac=01:11:22:33:44:55 k", "multicast"),
        ("rumprun xen -I x,xenif,mac=zz:11:22:33:44:55 k", "invalid MAC"),
        ("rumprun xen -I x,xenif,mac k", "invalid MAC"),
        ("rumprun xen -I x,xenif,bridge=br0,bridge=br1 k", "given twice"),
        ("rumprun xen -I x,xenif,bridge=averylongbridgename k", "invalid bridge"),
        ("rumprun xen -I x,xenif,bridge= k", "invalid value"),
        ('rumprun xen -I "x,xenif,script=a\'b" k', "invalid value"),
        ("rumprun xen -I x,xenif,,bridge=b k", "invalid vif option"),
        ("rumprun xen -I x,xenif,MAC=02:00:00:00:00:01 k", "invalid vif option"),
        ("rumprun xen -I x,xenif -W x k", "use [iftag,]"),
        ("rumprun xen -I x,xenif -n inet,dhcp k", "incompatible"),
        ("rumprun qemu -n inet,dhcp -I x,vioif k", "incompatible"),
        ("rumprun xen -W xen0,inet,dhcp k", "no interface 'xen0'"),
        ("rumprun xen -W xen0,inet,dhcp -I xen0,xenif k", "no interface 'xen0'"),
        ("rumprun xen -I xen0,xenif -W xen1,inet,dhcp k", "no interface 'xen1'"),
        ("rumprun xen -I x,xenif -W x,inet k", "use [iftag,]"),
        ("rumprun xen -I x,xenif -W x,ipx,dhcp k", "unknown address family"),
        ("rumprun xen -I x,xenif -W x,inet,bootp k", "unknown method"),
        ("rumprun xen -I x,xenif -W x,inet,auto k", "inet supports dhcp or static"),
        ("rumprun xen -I x,xenif -W x,inet6,dhcp k", "inet6 supports auto or static"),
        ("rumprun xen -I x,xenif -W x,inet,dhcp,1.2.3.4/24 k", "takes no address"),
        ("rumprun xen -I x,xenif -W x,inet,static k", "static needs"),
        ("rumprun xen -I x,xenif -W x,inet,static,1.2.3.4/24,1.2.3.1,x k", "static needs"),
        ("rumprun xen -I x,xenif -W x,inet,static,1.2.3.4 k", "needs a /PREFIX"),
        ("rumprun xen -I x,xenif -W x,inet,static,1.2.3.4/255.255.255.0 k", "needs a /PREFIX"),
        ("rumprun xen -I x,xenif -W x,inet,static,1.2.3.4/33 k", "invalid address"),
        ("rumprun xen -I x,xenif -W x,inet,static,1.2.3.256/24 k", "invalid address"),
        ("rumprun xen -I x,xenif -W x,inet,static,fd00::1/64 k", "not an inet address"),
        ("rumprun xen -I x,xenif -W x,inet6,static,10.0.0.1/8 k", "not an inet6 address"),
        ("rumprun xen -I x,xenif -W x,inet,static,10.0.0.0/24 k", "network or broadcast"),
        ("rumprun xen -I x,xenif -W x,inet,static,10.0.0.255/24 k", "network or broadcast"),
        ("rumprun xen -I x,xenif -W x,inet,static,224.0.0.1/24 k", "cannot be an interface"),
        ("rumprun xen -I x,xenif -W x,inet,static,10.0.0.2/24,10.0.1.1 k", "outside 10.0.0.0/24"),
        ("rumprun xen -I x,xenif -W x,inet,static,10.0.0.2/24,fd00::1 k", "outside"),
        ("rumprun xen -I x,xenif -W x,inet,static,10.0.0.2/24,gw k", "invalid gateway"),
        ("rumprun xen -I x,xenif -W x,inet,static,10.0.0.2/24,10.0.0.2 k", "own address"),
    ],
)
def test_rejections(line: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        p(line)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


# --- property tests ------------------------------------------------------------------------

_WORDS = st.sampled_from(
    [
        "rumprun",
        "xen",
        "qemu",
        "kvm",
        "iso",
        "--",
        "-",
        "-d",
        "-i",
        "-p",
        "-dip",
        "-S",
        "-D",
        "-h",
        "-N",
        "-M",
        "-e",
        "-b",
        "-g",
        "-I",
        "-W",
        "-n",
        "-t",
        "-T",
        "-Mx",
        "-N1",
        "redis",
        "64",
        "0",
        "A=1",
        "=",
        ",",
        "x,xenif",
        "x,vioif,-net user",
        "x,inet,dhcp",
        "inet,dhcp",
        "x,inet,static,10.0.0.2/24,10.0.0.1",
        "x,inet6,static,::/0",
        "d.img,/d",
        "1.2.3.4/99",
        "k.bin",
        "x,xenif,mac=00:11:22:33:44:55",
        "x,xenif,mac=ff:ff:ff:ff:ff:ff,bridge=",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_WORDS, st.text(max_size=12)), max_size=12))
def test_random_argv_only_raises_usage_error(argv: list[str]) -> None:
    try:
        inv = parse(argv)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert parse(inv.to_argv()) == inv


_TAGS = st.sampled_from(["xen0", "net1", "_a"])
_OPTS = st.sampled_from(
    [
        ["-d"],
        ["-i"],
        ["-p"],
        ["-N", "redis"],
        ["-M", "128"],
        ["-D", "1234"],
        ["-e", "A=b c"],
        ["-e", "X="],
        ["-b", "a.img"],
        ["-b", "a,b.img,"],
        ["-b", "x.img,/m/n"],
        ["-g", "-smp 2"],
    ]
)


@st.composite
def _argvs(draw: st.DrawFn) -> list[str]:
    platform = draw(st.sampled_from(["xen", "qemu", "kvm"]))
    kind = "xenif" if platform == "xen" else "vioif"
    argv: list[str] = []
    if draw(st.booleans()):
        argv += ["-S", "-t", "/tmp/r"]
    argv.append(platform)
    for opt in draw(st.lists(_OPTS, max_size=6)):
        if (opt == ["-d"] and platform != "xen") or (opt[0] == "-g" and platform == "xen"):
            continue
        argv += opt
    tags = draw(st.lists(_TAGS, unique=True, max_size=3))
    for tag in tags:
        backend = ",mac=02:00:00:00:00:01,bridge=xenbr0" if platform == "xen" else ",-net user"
        argv += ["-I", tag + "," + kind + draw(st.sampled_from(["", backend]))]
    for tag in tags:
        spec = draw(
            st.sampled_from(
                [
                    "inet,dhcp",
                    "inet,static,192.168.1.5/24",
                    "inet,static,10.1.2.3/16,10.1.0.1",
                    "inet6,auto",
                    "inet6,static,fd00::5/64,fd00::1",
                ]
            )
        )
        argv += ["-W", f"{tag},{spec}"]
    argv.append(draw(st.sampled_from(["bin/redis-server.bin", "-dash.bin"])))
    if argv[-1].startswith("-"):
        argv.insert(len(argv) - 1, "--")
    argv += draw(st.lists(st.sampled_from(["--", "-x", "a b", "6379"]), max_size=3))
    return argv


@settings(max_examples=200, deadline=None)
@given(_argvs())
def test_round_trip(argv: list[str]) -> None:
    inv = parse(argv)
    again = parse(inv.to_argv())
    assert again == inv
    assert again.to_argv() == inv.to_argv()
