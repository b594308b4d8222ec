"""Parse rumprun's launcher command line (``rumprun xen|qemu|kvm ... APP [args]``) into data.

Pure: no file-system checks, no subprocesses. The semantics follow rumprun's own driver
script, read at rumpkernel/rumprun ``app-tools/rumprun`` commit
06a0b518336db9834ab70c8a366252ba5e134a69 (the newest stored; it has ``-g``, ``ec2`` and Xen
``-I`` backend options; the older 35045310b547 has neither), and the guest side that consumes
what it writes, ``lib/librumprun_base/config.c`` commit 008489c1b2da (``config_ipv4``,
``config_ipv6``, ``handle_env``, ``handle_blk``). Where the script accepts something the guest
then rejects (``inet,auto``; a dotted netmask, which the guest reads with ``atoi``), or that
silently yields a broken guest (``-W`` naming a tag no earlier ``-I`` defined), we reject it here.

Shape of the command line (script ``usage()``)::

    rumprun [-h] [-DS] [-t|-T tmpdir] PLATFORM [guest options] APP [app args]

Both option groups are parsed like POSIX ``getopts``: clustered flags (``-dip``), an
argument attached or separate (``-M128``/``-M 128``), scanning stops at the first
non-option word or at ``--``. Everything after APP, ``--`` included, is the guest's
command line (the script passes ``"$@"`` through verbatim).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from uniklab import validate
from uniklab.errors import UsageError

Platform = Literal["xen", "qemu", "kvm"]
Family = Literal["inet", "inet6"]
Method = Literal["dhcp", "static", "auto"]

#: ``MEM_DEFAULT`` in the script: the memory a guest gets without ``-M``.
DEFAULT_MEMORY_MB = 64

#: The netif driver each platform gives the guest: the script hard-codes
#: ``-net nic,model=virtio`` on QEMU (NetBSD's ``vioif``) and Xen netfront is ``xenif``.
IF_KIND: dict[Platform, str] = {"xen": "xenif", "qemu": "vioif", "kvm": "vioif"}

#: The guest methods each family accepts (config.c ``config_ipv4`` / ``config_ipv6``).
METHODS: dict[Family, tuple[Method, ...]] = {
    "inet": ("dhcp", "static"),
    "inet6": ("auto", "static"),
}

USAGE = "usage: rumprun [script args] PLATFORM [guest args] APP [ -- ] [app args]"

SCRIPT_OPTS = "DhSt:T:"  # script: scriptopts='DhSt:T:'
GUEST_OPTS = "b:dD:e:g:iI:M:n:N:pW:"  # script: guestopts='b:dD:e:g:iI:M:n:N:pW:'

# The script builds shell variable names from the tag (`eval ${iftag}2ifname=...`).
_TAG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
_KIND_RE = re.compile(r"^[a-z]{1,15}$")
_VIF_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_VIF_VALUE_BAD = re.compile(r"[\s'\",\[\]=]")
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_DIGITS_RE = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class RumprunIf:
    """One guest network interface (``-I iftag,ifbasename[,backendopts]``, or implied by ``-n``).

    ``backendopts`` mean different things per platform (script ``createif_xen`` vs
    ``createif_qemu``): on Xen they are an xl vifspec (``mac=..,bridge=..``), which we split
    into ``mac``, ``bridge`` and ``extra``; on QEMU/KVM they are raw QEMU words appended after
    ``-net nic,model=virtio,macaddr=<random 52:54:00:..>``, kept in ``qemu_args``.
    """

    tag: str
    kind: str  # ifbasename: "xenif" on Xen, "vioif" on QEMU/KVM
    mac: str | None = None  # Xen only: vifspec mac=, normalised to lower case
    bridge: str | None = None  # Xen only: vifspec bridge=
    extra: tuple[tuple[str, str], ...] = ()  # Xen only: other vifspec keys; "" = a bare flag
    qemu_args: tuple[str, ...] = ()  # QEMU/KVM only: the backend words, e.g. ("-net", "user")
    implicit: bool = False  # created by old-style -n; its tag is "_net<N>"

    def spec(self) -> str:
        """The ``-I`` argument that recreates this interface."""
        if self.qemu_args:
            return f"{self.tag},{self.kind}," + " ".join(self.qemu_args)
        items = [f"mac={self.mac}"] if self.mac else []
        if self.bridge:
            items.append(f"bridge={self.bridge}")
        items += [f"{k}={v}" if v else k for k, v in self.extra]
        return ",".join([self.tag, self.kind, *items])


@dataclass(frozen=True)
class RumprunNet:
    """One address configuration for an interface (``-W iftag,netspec`` or ``-n netspec``)."""

    tag: str
    family: Family
    method: Method
    address: str | None = None  # static only: interface form, "10.0.0.2/24"
    gateway: str | None = None  # static only, optional: an address inside that subnet

    def netspec(self) -> str:
        """The netspec part (without the tag) that recreates this configuration."""
        parts: list[str] = [self.family, self.method]
        if self.address:
            parts.append(self.address)
        if self.gateway:
            parts.append(self.gateway)
        return ",".join(parts)


@dataclass(frozen=True)
class RumprunBlock:
    """A block device (``-b hostpath[,mountpoint]``); mounted in the guest if a mountpoint."""

    path: str
    mountpoint: str | None = None

    def spec(self) -> str:
        # The script splits on the *last* comma, so a path with a comma needs a trailing one.
        if self.mountpoint:
            return f"{self.path},{self.mountpoint}"
        return f"{self.path}," if "," in self.path else self.path


@dataclass(frozen=True)
class RumprunInvocation:
    """Everything one ``rumprun`` command line asks for. ``parse(x.to_argv()) == x``."""

    platform: Platform
    image: str  # APP: the baked unikernel, e.g. "bin/redis-server.bin"
    app_args: tuple[str, ...] = ()  # words after APP, verbatim ("--" included)
    name: str | None = None  # -N; also the guest hostname. None: "rumprun-<basename APP>"
    memory_mb: int | None = None  # -M, in MiB. None: DEFAULT_MEMORY_MB
    interfaces: tuple[RumprunIf, ...] = ()
    networks: tuple[RumprunNet, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # -e VAR=VALUE, in order
    blocks: tuple[RumprunBlock, ...] = ()
    destroy_on_poweroff: bool = False  # -d (Xen only): on_poweroff/on_crash="destroy"
    interactive: bool = False  # -i: attach to the console; otherwise print id and detach
    paused: bool = False  # -p: create the guest but leave it paused
    gdb_port: int | None = None  # -D PORT: gdbsx on Xen, "-gdb tcp::PORT" on QEMU/KVM
    guest_args: tuple[str, ...] = ()  # -g (QEMU/KVM only): extra QEMU words, accumulated
    dump_commands: bool = False  # script -D: echo backend commands instead of running them
    sudo: bool = False  # script -S: use sudo where potentially necessary
    tmpdir: str | None = None  # script -t/-T
    keep_tmpdir: bool = False  # script -T: like -t but keep the directory

    @property
    def detached(self) -> bool:
        """Without ``-i`` the script prints ``xen:<domid>``/``qemu:<pid>`` and returns."""
        return not self.interactive

    @property
    def effective_name(self) -> str:
        """The guest name the script would use (the default is not validated)."""
        return self.name or "rumprun-" + posixpath.basename(self.image)

    @property
    def effective_memory_mb(self) -> int:
        return self.memory_mb if self.memory_mb is not None else DEFAULT_MEMORY_MB

    def to_argv(self) -> list[str]:
        """A canonical ``rumprun`` argv (without the program name) for this invocation."""
        argv: list[str] = []
        if self.dump_commands:
            argv.append("-D")
        if self.sudo:
            argv.append("-S")
        if self.tmpdir is not None:
            argv += ["-T" if self.keep_tmpdir else "-t", self.tmpdir]
        argv.append(self.platform)
        for flag, on in (("-d", self.destroy_on_poweroff), ("-i", self.interactive)):
            if on:
                argv.append(flag)
        if self.paused:
            argv.append("-p")
        if self.name is not None:
            argv += ["-N", self.name]
        if self.memory_mb is not None:
            argv += ["-M", str(self.memory_mb)]
        if self.gdb_port is not None:
            argv += ["-D", str(self.gdb_port)]
        for words in self.guest_args:
            argv += ["-g", words]
        for key, value in self.env:
            argv += ["-e", f"{key}={value}"]
        for blk in self.blocks:
            argv += ["-b", blk.spec()]
        implicit = {i.tag for i in self.interfaces if i.implicit}
        for iface in self.interfaces:
            if not iface.implicit:
                argv += ["-I", iface.spec()]
        for net in self.networks:
            if net.tag in implicit:
                implicit.discard(net.tag)
                argv += ["-n", net.netspec()]
            else:
                argv += ["-W", f"{net.tag},{net.netspec()}"]
        argv += ["--", self.image, *self.app_args]
        return argv


def _getopts(
    args: Sequence[str], optstring: str, where: str
) -> Iterator[tuple[str, str | None, int]]:
    """POSIX getopts: yield (letter, argument, index of the next unread word)."""
    takes_arg = {c for i, c in enumerate(optstring) if optstring[i + 1 : i + 2] == ":"}
    letters = set(optstring.replace(":", ""))
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            yield "", None, i + 1  # the end marker, consumed
            return
        if not word.startswith("-") or word == "-":
            return
        if word.startswith("--"):  # getopts reads "--x" as the letters "-", "x": say the word
            raise UsageError(f"rumprun: unknown {where} option {word}")
        i += 1
        pos = 1
        while pos < len(word):
            letter = word[pos]
            pos += 1
            if letter not in letters:
                raise UsageError(f"rumprun: unknown {where} option -{letter}")
            if letter not in takes_arg:
                yield letter, None, i
                continue
            if pos < len(word):
                value = word[pos:]
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise UsageError(f"rumprun: option -{letter} needs an argument")
            yield letter, value, i
            break


def parse(argv: Sequence[str]) -> RumprunInvocation:
    """Parse rumprun's arguments (``argv`` without the program name; a leading ``rumprun``
    word is tolerated). Raises ``UsageError`` with one line on anything malformed."""
    args = list(argv)
    if args and posixpath.basename(args[0]) == "rumprun":
        args = args[1:]

    dump = sudo = keep = False
    tmpdir: str | None = None
    start = 0
    for letter, value, nxt in _getopts(args, SCRIPT_OPTS, "script"):
        start = nxt
        if letter == "h":
            raise UsageError(USAGE)
        if letter == "D":
            dump = True
        elif letter == "S":
            sudo = True
        elif letter in ("t", "T"):
            if not value:
                raise UsageError(f"rumprun: -{letter} needs a directory")
            tmpdir, keep = value, letter == "T"

    if start >= len(args):
        raise UsageError(f"rumprun: missing platform (xen, qemu or kvm); {USAGE}")
    word = args[start]
    platform: Platform
    if word == "xen":
        platform = "xen"
    elif word == "qemu":
        platform = "qemu"
    elif word == "kvm":
        platform = "kvm"
    elif word in ("iso", "ec2"):
        raise UsageError(
            f"rumprun: platform {word!r} bakes an image instead of running one; "
            "uniklab runs xen, qemu or kvm"
        )
    else:
        raise UsageError(f"rumprun: unknown platform {word!r}: use xen, qemu or kvm")
    return _parse_guest(platform, args[start + 1 :], dump, sudo, tmpdir, keep)


def _parse_guest(
    platform: Platform,
    args: list[str],
    dump: bool,
    sudo: bool,
    tmpdir: str | None,
    keep: bool,
) -> RumprunInvocation:
    is_xen = platform == "xen"
    name: str | None = None
    memory: int | None = None
    gdb: int | None = None
    destroy = interactive = paused = False
    guest_args: list[str] = []
    env: list[tuple[str, str]] = []
    blocks: list[RumprunBlock] = []
    ifaces: dict[str, RumprunIf] = {}
    nets: list[RumprunNet] = []
    netstyle: str | None = None  # script NETSTYLE: -n ("o") and -I ("n") do not mix
    nindex = 0
    rest = 0

    for letter, value, nxt in _getopts(args, GUEST_OPTS, f"{platform}"):
        rest = nxt
        arg = value or ""
        if letter == "":
            break
        if letter == "d":
            if not is_xen:
                raise UsageError("rumprun: -d not supported on qemu/kvm")
            destroy = True
        elif letter == "i":
            interactive = True
        elif letter == "p":
            paused = True
        elif letter == "N":
            name = validate.name(arg, "guest name (-N)")
        elif letter == "M":
            memory = _memory(arg)
        elif letter == "D":
            gdb = validate.port(arg, "gdb port (-D)")
        elif letter == "g":
            if is_xen:
                raise UsageError("rumprun: -g not supported on xen")
            if not arg.split():
                raise UsageError("rumprun: -g needs QEMU arguments")
            guest_args.append(" ".join(arg.split()))
        elif letter == "e":
            env.append(validate.env_pair(arg))
        elif letter == "b":
            blocks.append(_block(arg))
        elif letter == "I":
            if netstyle == "o":
                raise UsageError("rumprun: -n/-I are incompatible")
            netstyle = "n"
            iface = _interface(platform, arg)
            if iface.tag in ifaces:
                raise UsageError(f"rumprun: -I {arg}: interface tag {iface.tag!r} given twice")
            ifaces[iface.tag] = iface
            nindex += 1
        elif letter == "n":
            if netstyle == "n":
                raise UsageError("rumprun: -n/-I are incompatible")
            netstyle = "o"
            tag = f"_net{nindex}"
            qemu_args = () if is_xen else ("-net", "user")
            ifaces[tag] = RumprunIf(tag, IF_KIND[platform], qemu_args=qemu_args, implicit=True)
            nets.append(_network(tag, arg, f"-n {arg}"))
            nindex += 1
        elif letter == "W":
            tag, _, spec = arg.partition(",")
            if tag not in ifaces:
                raise UsageError(
                    f"rumprun: -W {arg}: no interface {tag!r} defined by an earlier -I"
                )
            nets.append(_network(tag, spec, f"-W {arg}"))

    tail = args[rest:]
    if not tail or not tail[0]:
        raise UsageError(f"rumprun: missing APP (the unikernel image to run); {USAGE}")
    return RumprunInvocation(
        platform=platform,
        image=tail[0],
        app_args=tuple(tail[1:]),
        name=name,
        memory_mb=memory,
        interfaces=tuple(ifaces.values()),
        networks=tuple(nets),
        env=tuple(env),
        blocks=tuple(blocks),
        destroy_on_poweroff=destroy,
        interactive=interactive,
        paused=paused,
        gdb_port=gdb,
        guest_args=tuple(guest_args),
        dump_commands=dump,
        sudo=sudo,
        tmpdir=tmpdir,
        keep_tmpdir=keep,
    )


def _memory(value: str) -> int:
    # The script hands -M to both `xl memory=` and `qemu -m`: plain megabytes only.
    if not _DIGITS_RE.match(value):
        raise UsageError(f"rumprun: invalid memory -M {value!r}: a whole number of megabytes")
    return validate.memory_mb(int(value))


def _block(spec: str) -> RumprunBlock:
    # parse_blkspec: image="${spec%,*}" and the mountpoint is what follows the last comma.
    path, comma, mountpoint = spec.rpartition(",")
    if not comma:
        path, mountpoint = spec, ""
    if not path:
        raise UsageError(f"rumprun: -b {spec!r}: missing host path; use hostpath[,mountpoint]")
    if mountpoint and (not mountpoint.startswith("/") or re.search(r"[\s\"\\]", mountpoint)):
        raise UsageError(f"rumprun: -b {spec!r}: mountpoint must be an absolute guest path")
    return RumprunBlock(path, mountpoint or None)


def _interface(platform: Platform, spec: str) -> RumprunIf:
    tag, comma, rest = spec.partition(",")
    kind, _, opts = rest.partition(",")
    if not comma or not kind:
        raise UsageError(f"rumprun: -I {spec!r}: use iftag,ifbasename[,backendopts]")
    if not _TAG_RE.match(tag):
        raise UsageError(
            f"rumprun: -I {spec!r}: invalid interface tag {tag!r}: "
            "use letters, digits and '_', not starting with a digit"
        )
    want = IF_KIND[platform]
    if kind != want:
        if not _KIND_RE.match(kind):
            raise UsageError(f"rumprun: -I {spec!r}: invalid interface basename {kind!r}")
        raise UsageError(f"rumprun: -I {spec!r}: on {platform} the interface kind is {want!r}")
    if platform != "xen":
        words = tuple(opts.split())
        return RumprunIf(tag, kind, qemu_args=words)

    mac: str | None = None
    bridge: str | None = None
    extra: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in opts.split(",") if opts else []:
        key, eq, value = item.partition("=")
        if not _VIF_KEY_RE.match(key):
            raise UsageError(f"rumprun: -I {spec!r}: invalid vif option {item!r}")
        if key in seen:
            raise UsageError(f"rumprun: -I {spec!r}: vif option {key!r} given twice")
        seen.add(key)
        if eq and (not value or _VIF_VALUE_BAD.search(value)):
            raise UsageError(f"rumprun: -I {spec!r}: invalid value for vif option {key!r}")
        if key == "mac":
            mac = validate.mac(value)
        elif key == "bridge":
            if not _BRIDGE_RE.match(value):
                raise UsageError(f"rumprun: -I {spec!r}: invalid bridge name {value!r}")
            bridge = value
        else:
            extra.append((key, value))
    return RumprunIf(tag, kind, mac=mac, bridge=bridge, extra=tuple(extra))


def _network(tag: str, spec: str, shown: str) -> RumprunNet:
    fields = spec.split(",")
    if len(fields) < 2:
        raise UsageError(
            f"rumprun: {shown}: use [iftag,]inet,dhcp | inet,static,ADDR/PREFIX[,GW] | inet6,auto"
        )
    family_s, method_s, *params = fields
    family: Family
    if family_s == "inet":
        family = "inet"
    elif family_s == "inet6":
        family = "inet6"
    else:
        raise UsageError(f"rumprun: {shown}: unknown address family {family_s!r}")
    method: Method
    if method_s == "dhcp":
        method = "dhcp"
    elif method_s == "static":
        method = "static"
    elif method_s == "auto":
        method = "auto"
    else:
        raise UsageError(f"rumprun: {shown}: unknown method {method_s!r}")
    if method not in METHODS[family]:
        raise UsageError(
            f"rumprun: {shown}: {family} supports {' or '.join(METHODS[family])}, not {method}"
        )
    if method != "static":
        if params:
            raise UsageError(f"rumprun: {shown}: {method} takes no address")
        return RumprunNet(tag, family, method)
    if not 1 <= len(params) <= 2:
        raise UsageError(f"rumprun: {shown}: static needs ADDR/PREFIX[,GATEWAY]")
    address, gateway = _static(family, params[0], params[1] if len(params) > 1 else None, shown)
    return RumprunNet(tag, family, method, address, gateway)


def _static(family: Family, cidr: str, gw: str | None, shown: str) -> tuple[str, str | None]:
    version = 4 if family == "inet" else 6
    addr_s, slash, prefix = cidr.partition("/")
    # The guest reads the mask with atoi(): "255.255.255.0" would become /255.
    if not slash or not prefix.isdigit() or not prefix.isascii():
        raise UsageError(f"rumprun: {shown}: address {cidr!r} needs a /PREFIX length, e.g. /24")
    try:
        iface = ipaddress.ip_interface(f"{addr_s}/{int(prefix)}")
    except ValueError:
        raise UsageError(f"rumprun: {shown}: invalid address {cidr!r}") from None
    if iface.version != version:
        raise UsageError(f"rumprun: {shown}: {cidr!r} is not an {family} address")
    net = iface.network
    host = iface.ip
    if host.is_multicast or host.is_unspecified:
        raise UsageError(f"rumprun: {shown}: {cidr!r} cannot be an interface address")
    if (
        version == 4
        and net.prefixlen <= 30
        and host in (net.network_address, net.broadcast_address)
    ):
        raise UsageError(f"rumprun: {shown}: {cidr!r} is the network or broadcast address")
    if gw is None:
        return str(iface), None
    try:
        gateway = ipaddress.ip_address(gw)
    except ValueError:
        raise UsageError(f"rumprun: {shown}: invalid gateway {gw!r}") from None
    if gateway.version != version or gateway not in net:
        raise UsageError(f"rumprun: {shown}: gateway {gw} is outside {net}")
    if gateway == host:
        raise UsageError(f"rumprun: {shown}: gateway {gw} is the interface's own address")
    return str(iface), str(gateway)
