"""Hundreds of bad inputs, through every face of uniklab: each is refused with one clear line
(the CLI: on stderr, no traceback, a non-zero exit; the API: a ``UniklabError``), before any
work starts, and leaves nothing behind (rows, files, processes, links, namespaces).

The cases run in-process (``main()``), grouped per face so the whole table takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import uniklab
from tests.support.leaks import Baseline
from uniklab.cli.main import main
from uniklab.errors import UniklabError
from uniklab.net.attach import NicRequest

pytestmark = pytest.mark.faults

HUGE = "x" * 10_000_000  # 10 MB
BIG_INT = str(2**64)

# Names with shell metacharacters, path separators, unicode, control bytes, markup, sizes.
BAD_NAMES = [
    "",
    " ",
    "a b",
    "a;rm -rf /",
    "$(id)",
    "`id`",
    "a|b",
    "a&b",
    "a>b",
    "../etc",
    "a/b",
    "/abs",
    ".hidden",
    "UPPER",
    "é",
    "名前",
    "🐳",
    "a\nb",
    "a\0b",
    "a\tb",
    "x" * 64,
    HUGE,
    "a'b",
    'a"b',
    "a\\b",
    "*",
    "a?b",
    "~root",
    "[/red]",
    "[bold]x",
    "\u202eab",
    "%s%n",
]
BAD_SIZES = [
    "",
    "lots",
    "0",
    "-1",
    "8M",
    "15M",
    "99999G",
    "2T",
    "1.5G",
    "1e3M",
    "0x80M",
    "128MiBB",
    "\u0661\u0662\u0668M",  # Arabic-Indic digits: int() takes them, the size regex must not
    "128M\0",
    BIG_INT,
    "9" * 1000,
    "128K",
    "1P",
    "M",
    "-128M",
    "128M;id",
    "nan",
]
BAD_PUBLISH = [
    "0:6379",
    "70000:6379",
    "6379:0",
    "6379:70000",
    f"{BIG_INT}:6379",
    "a:b",
    "1:2:3",
    "",
    ":",
    "6379:",
    "-1:6379",
    "6379/udp",
    "::1:80",
    "6379\0",
]
BAD_ENV = ["NOEQ", "=v", "1A=v", "A-B=v", "A B=v", "A\0=v", "A=v\0", "é=v", "A.B=v", ""]
BAD_NET = [
    "",
    "bad name",
    "lab,foo=bar",
    "lab,mac",
    "lab,mac=zz",
    "lab,mac=01:00:5e:00:00:01",
    "lab,mac=00:00:00:00:00:00",
    "lab,mac=00:11:22:33:44",
    "lab,mac=00:11:22:33:44:55:66",
    "lab,ip=300.1.1.1/24",
    "lab,ip=10.0.0.1/33",
    "lab,ip=10.0.0.1/x",
    "lab,ip=::1/64",
    "lab,gw=x",
    "lab,gw=10.0.0.1;id",
    "../lab",
]
BAD_MACS = ["zz", "", "00:11:22:33:44", "01:00:00:00:00:01", "00-11-22-33-44-GG", HUGE, "a\0"]


@dataclass(frozen=True)
class Case:
    """One bad input: a CLI argv, or an API call (given the home) that must raise."""

    id: str
    argv: list[str] | None = None
    call: Callable[[Path], object] | None = None
    expect: str = ""  # a piece of the error line, when the wording matters


def cli(id: str, *argv: str, expect: str = "") -> Case:
    return Case(id, argv=list(argv), expect=expect)


def api(id: str, call: Callable[[Path], object], expect: str = "") -> Case:
    return Case(id, call=call, expect=expect)


def _short(v: str) -> str:
    return repr(v[:40]) + (f"+{len(v)}" if len(v) > 40 else "")


# -- CLI run ---------------------------------------------------------------------------------
RUN: list[Case] = [
    *(cli(f"run --name {_short(n)}", "run", "redis", f"--name={n}") for n in BAD_NAMES),
    *(cli(f"run --memory {_short(s)}", "run", "redis", f"--memory={s}") for s in BAD_SIZES),
    *(
        cli(f"run --vcpus {v}", "run", "redis", f"--vcpus={v}")
        for v in ("0", "-1", "65", BIG_INT, "1.5", "x", "")
    ),
    *(cli(f"run -p {_short(p)}", "run", "redis", f"--publish={p}") for p in BAD_PUBLISH),
    *(cli(f"run -e {_short(e)}", "run", "redis", f"--env={e}") for e in BAD_ENV),
    *(
        cli(f"run -l {_short(e)}", "run", "redis", f"--label={e}")
        for e in ("noeq", "=v", "a\0=b", "a=b\0")
    ),
    *(cli(f"run --net {_short(n)}", "run", "redis", f"--net={n}") for n in BAD_NET),
    *(cli(f"run --mac {_short(m)}", "run", "redis", "--net=lab", f"--mac={m}") for m in BAD_MACS),
    cli("run --mac without --net", "run", "redis", "--mac=00:11:22:33:44:55"),
    cli("run --ip without --net", "run", "redis", "--ip=10.0.0.2/24"),
    cli("run --ip garbage", "run", "redis", "--net=lab", "--ip=10.0.0.300/24"),
    cli("run --gateway garbage", "run", "redis", "--net=lab", "--ip=10.0.0.2/24", "--gateway=x"),
    cli("run -p with --net", "run", "redis", "--net=lab", "-p", "6379:6379"),
    cli("run -p twice", "run", "redis", "-p", "7000:6379", "-p", "7000:6379"),
    cli("run --host ghost", "run", "redis", "--host=ghost"),
    cli("run --host shell", "run", "redis", "--host=a;id"),
    cli("run --restart bogus", "run", "redis", "--restart=always"),
    cli("run --timeout nan --wait", "run", "redis", "--timeout=nan", "--wait"),
    cli("run --timeout -1 --wait", "run", "redis", "--timeout=-1", "--wait"),
    cli("run --timeout 0 --wait", "run", "redis", "--timeout=0", "--wait"),
    cli("run --timeout x", "run", "redis", "--timeout=x"),
    cli("run no image", "run"),
    cli("run image ''", "run", ""),
    cli("run image Bad/Image", "run", "Bad/Image"),
    cli("run image path", "run", "../../etc/passwd"),
    cli("run image bad tag", "run", "redis:bad tag"),
    cli("run image two colons", "run", "redis:a:b"),
    cli("run image huge", "run", HUGE),
    cli("run image NUL", "run", "redis\0"),
    cli("run image unknown", "run", "nosuchimage", expect="no image nosuchimage:latest"),
    cli("run image unknown tag", "run", "redis:v9"),
    cli("run unknown option", "run", "redis", "--bogus"),
    cli("run args too large", "run", "redis", "--", "x" * 2000, expect="too large"),
    cli("run args 10MB", "run", "redis", "--", HUGE, expect="too large"),
    cli("run env 10MB", "run", "redis", "-e", "A=" + HUGE, expect="too large"),
    cli("run many args", "run", "redis", "--", *(["--x"] * 1000), expect="too large"),
]

# -- CLI bake ---------------------------------------------------------------------------------
BAKE: list[Case] = [
    cli("bake nothing", "bake"),
    cli("bake unknown", "bake", "nosuchrecipe", expect="no recipe named"),
    *(cli(f"bake {_short(n)}", "bake", n) for n in BAD_NAMES if n),
    cli("bake missing file", "bake", "/nonexistent/recipe.toml", expect="no recipe file"),
    cli("bake dir", "bake", "/etc/"),
    cli("bake device", "bake", "/dev/null"),
    *(
        cli(f"bake -t {_short(t)}", "bake", "redis", f"--tag={t}")
        for t in ("bad tag", "a/b", "x" * 200, "-x", "é", "a\0", HUGE, ".x", "a:b")
    ),
    cli("bake --kernel missing", "bake", "redis", "--kernel=/nonexistent"),
    cli("bake --kernel bogus", "bake", "redis", "--kernel=bogus"),
    cli("bake --kernel NUL", "bake", "redis", "--kernel=/boot\0x"),
    cli("bake recipe and --binary", "bake", "redis", "--binary=/bin/true"),
    cli("bake --port without --binary", "bake", "redis", "--port=80"),
    cli("bake --arg without --binary", "bake", "redis", "--arg=x"),
    cli("bake --binary missing", "bake", "--binary=/nonexistent"),
    cli("bake --binary dir", "bake", "--binary=/bin"),
    cli("bake --binary NUL", "bake", "--binary=/bin/true\0"),
    cli("bake --binary huge path", "bake", "--binary=/" + HUGE),
    *(
        cli(f"bake --binary --port {p}", "bake", "--binary=/bin/true", f"--port={p}")
        for p in ("0", "70000", "-1", BIG_INT, "x")
    ),
    *(
        cli(f"bake --binary --name {_short(n)}", "bake", "--binary=/bin/true", f"--name={n}")
        for n in ("A B", "a;b", "../x", "é", "a\0")
    ),
    *(
        cli(f"bake --binary --memory {_short(s)}", "bake", "--binary=/bin/true", f"--memory={s}")
        for s in ("lots", "8M", "2T", "")
    ),
    cli("bake --binary --arg NUL", "bake", "--binary=/bin/true", "--arg=a\0b"),
    cli("bake --binary --arg 10MB", "bake", "--binary=/bin/true", "--arg=" + HUGE),
]

# -- recipe files -----------------------------------------------------------------------------
BASE = 'name = "myapp"\nbinary = "/usr/bin/redis-server"\n'
RECIPES: list[tuple[str, str]] = [
    ("not toml", "name = "),
    ("brackets", "[[["),
    ("binary", "\0\1\2"),
    ("missing name", 'binary = "/usr/bin/redis-server"\n'),
    ("missing binary", 'name = "x"\n'),
    ("unknown key", BASE + "colour = 1\n"),
    ("unknown probe key", BASE + "ports = [1]\n[probe]\nkind = 'tcp'\ntimeout = 3\n"),
    ("unknown files key", BASE + "[[files]]\ndest = '/etc/x'\ncontent = ''\nowner = 'x'\n"),
    ("name upper", 'name = "A"\nbinary = "/usr/bin/redis-server"\n'),
    ("name shell", 'name = "a;b"\nbinary = "/usr/bin/redis-server"\n'),
    ("name path", 'name = "../x"\nbinary = "/usr/bin/redis-server"\n'),
    ("name empty", 'name = ""\nbinary = "/usr/bin/redis-server"\n'),
    ("name unicode", 'name = "réd"\nbinary = "/usr/bin/redis-server"\n'),
    ("name NUL", 'name = "a\\u0000"\nbinary = "/usr/bin/redis-server"\n'),
    ("name huge", f'name = "{"x" * 100_000}"\nbinary = "/usr/bin/redis-server"\n'),
    ("name int", 'name = 3\nbinary = "/usr/bin/redis-server"\n'),
    ("binary relative", 'name = "x"\nbinary = "redis-server"\n'),
    ("binary dotdot", 'name = "x"\nbinary = "/usr/bin/../../etc/passwd"\n'),
    ("binary missing", 'name = "x"\nbinary = "/nonexistent/bin"\n'),
    ("binary NUL", 'name = "x"\nbinary = "/usr/bin/redis-server\\u0000"\n'),
    ("binary not ELF", 'name = "x"\nbinary = "/etc/passwd"\n'),
    ("binary dir", 'name = "x"\nbinary = "/usr/bin"\n'),
    ("port 0", BASE + "ports = [0]\n"),
    ("port 70000", BASE + "ports = [70000]\n"),
    ("port 2**64", BASE + f"ports = [{2**64}]\n"),
    ("port twice", BASE + "ports = [6379, 6379]\n"),
    ("port string", BASE + 'ports = ["x"]\n'),
    ("ports not list", BASE + "ports = 6379\n"),
    ("probe kind", BASE + "ports = [1]\n[probe]\nkind = 'bogus'\n"),
    ("probe port elsewhere", BASE + "ports = [1]\n[probe]\nkind = 'tcp'\nport = 2\n"),
    ("probe status", BASE + "ports = [1]\n[probe]\nkind = 'http'\nstatus = 999\n"),
    ("probe path", BASE + "ports = [1]\n[probe]\nkind = 'http'\npath = 'x'\n"),
    ("probe marker", BASE + "[probe]\nkind = 'console'\nmarker = '(['\n"),
    ("probe no port", BASE + "[probe]\nkind = 'redis'\n"),
    ("memory", BASE + 'memory = "lots"\n'),
    ("memory small", BASE + 'memory = "8M"\n'),
    ("memory int", BASE + "memory = 128\n"),
    ("min_memory above", BASE + 'memory = "128M"\nmin_memory = "256M"\n'),
    ("env name dash", BASE + 'env = { "A-B" = "x" }\n'),
    ("env name empty", BASE + 'env = { "" = "x" }\n'),
    ("env name =", BASE + 'env = { "A=B" = "x" }\n'),
    ("env value NUL", BASE + 'env = { A = "x\\u0000" }\n'),
    ("env value int", BASE + "env = { A = 1 }\n"),
    ("env not table", BASE + "env = 3\n"),
    ("args NUL", BASE + 'args = ["a\\u0000b"]\n'),
    ("args string", BASE + 'args = "--port 1"\n'),
    ("args ints", BASE + "args = [1]\n"),
    ("files dest proc", BASE + "[[files]]\ndest = '/proc/x'\ncontent = ''\n"),
    ("files dest init", BASE + "[[files]]\ndest = '/init'\ncontent = ''\n"),
    ("files dest relative", BASE + "[[files]]\ndest = 'etc/x'\ncontent = ''\n"),
    ("files dest dotdot", BASE + "[[files]]\ndest = '/../etc/x'\ncontent = ''\n"),
    ("files dest root", BASE + "[[files]]\ndest = '/'\ncontent = ''\n"),
    ("files dest passwd", BASE + "[[files]]\ndest = '/etc/passwd'\ncontent = ''\n"),
    ("files src escape", BASE + "[[files]]\ndest = '/etc/x'\nsrc = '../escape'\n"),
    ("files src host", BASE + "[[files]]\ndest = '/etc/x'\nsrc = '/etc/passwd'\n"),
    ("files src missing", BASE + "[[files]]\ndest = '/etc/x'\nsrc = 'missing.conf'\n"),
    ("files both", BASE + "[[files]]\ndest = '/etc/x'\nsrc = 'a'\ncontent = 'b'\n"),
    ("files neither", BASE + "[[files]]\ndest = '/etc/x'\n"),
    ("files mode", BASE + "[[files]]\ndest = '/etc/x'\ncontent = ''\nmode = 0o77777\n"),
    (
        "files twice",
        BASE + "[[files]]\ndest='/etc/x'\ncontent=''\n[[files]]\ndest='/etc/x'\ncontent=''\n",
    ),
    ("dirs dev", BASE + 'dirs = ["/dev/x"]\n'),
    ("dirs mode", BASE + 'dirs = [{ path = "/x", mode = -1 }]\n'),
    ("users root name", BASE + "[[users]]\nname = 'root'\nuid = 5\n"),
    ("users uid 0", BASE + "[[users]]\nname = 'u'\nuid = 0\n"),
    ("users uid big", BASE + f"[[users]]\nname = 'u'\nuid = {2**63 - 1}\n"),
    ("users bad name", BASE + "[[users]]\nname = 'U;x'\nuid = 5\n"),
    ("users twice", BASE + "[[users]]\nname='u'\nuid=5\n[[users]]\nname='u'\nuid=6\n"),
    ("groups member", BASE + "[[groups]]\nname = 'g'\ngid = 5\nmembers = ['nobody']\n"),
    ("groups gid 0", BASE + "[[groups]]\nname = 'g'\ngid = 0\n"),
    ("libs dotdot", BASE + 'libs = ["../lib.so"]\n'),
    ("libs relative path", BASE + 'libs = ["a/b.so"]\n'),
    ("libs empty", BASE + 'libs = [""]\n'),
    ("install_as tmp", BASE + 'install_as = "/tmp/x"\n'),
    ("workdir relative", BASE + 'workdir = "rel"\n'),
    ("docroot sys", BASE + 'docroot = "/sys/x"\n'),
    ("page without docroot", BASE + 'page = "<h1>"\n'),
    ("modules shell", BASE + 'modules = ["a;b"]\n'),
    ("package bad", BASE + 'package = "Bad Pkg"\n'),
]


def _recipe_cases(tmp: Path) -> list[Case]:
    tmp.mkdir(exist_ok=True)
    out = []
    for i, (what, text) in enumerate(RECIPES):
        path = tmp / f"r{i}.toml"
        path.write_text(text)
        out.append(cli(f"recipe {what}", "bake", str(path)))
    # The same through the API, for a sample.
    for i in (0, 5, 17, 41, 44, 53):
        out.append(api(f"api bake recipe {RECIPES[i][0]}", _bake(str(tmp / f"r{i}.toml"))))
    return out


def _bake(ref: str, tag: str = "latest") -> Callable[[Path], object]:
    return lambda home: uniklab.bake(ref, tag=tag, home=home)


# -- net create --------------------------------------------------------------------------------
NET: list[Case] = [
    *(
        cli(f"net create {_short(n)}", "net", "create", n, "--subnet=10.91.0.0/24")
        for n in BAD_NAMES
        if n != "" and not n.startswith("-")
    ),
    *(
        cli(f"net create --subnet {_short(s)}", "net", "create", "lab", f"--subnet={s}")
        for s in (
            "10.91.0.1/24",
            "10.91.0.0/33",
            "300.0.0.0/24",
            "10.0.0.0/8",
            "10.91.0.0/30",
            "fd00::/64",
            "",
            "x",
            "10.91.0.0/24;id",
            "10.91.0.0",
            "0.0.0.0/0",
            BIG_INT,
        )
    ),
    *(
        cli(
            f"net create --bridge {_short(b)}",
            "net",
            "create",
            "lab",
            "--subnet=10.91.0.0/24",
            f"--bridge={b}",
        )
        for b in ("a b", "x" * 16, "../x", "a/b", "a;b", "é", "", "lo")
    ),
    *(
        cli(
            f"net create --netns {_short(n)}",
            "net",
            "create",
            "lab",
            "--subnet=10.91.0.0/24",
            f"--netns={n}",
        )
        for n in ("a/b", "../../etc", ".", "A", "a b", "x" * 64, "a\0")
    ),
    cli("net create no subnet, no bridge", "net", "create", "lab", "--bridge=uklnobr0"),
    cli("net rm ghost", "net", "rm", "ghost"),
    cli("net rm shell", "net", "rm", "a;b"),
    cli("net rm nothing", "net", "rm"),
]

# -- host add ----------------------------------------------------------------------------------
HOST: list[Case] = [
    *(cli(f"host add {_short(n)}", "host", "add", n, "--ssh=root@10.0.0.5") for n in BAD_NAMES),
    cli("host add local", "host", "add", "local", "--ssh=root@10.0.0.5"),
    *(
        cli(f"host add --ssh {_short(s)}", "host", "add", "h1", f"--ssh={s}")
        for s in (
            "noat",
            "@10.0.0.5",
            "root@",
            "root@a;id",
            "root@$(id)",
            "Root@10.0.0.5",
            "root@a b",
            "root@-oProxyCommand=id",
            "root@10.0.0.5\0",
            "root@" + HUGE,
            "a@b@c;d",
        )
    ),
    *(
        cli(f"host add --port {p}", "host", "add", "h1", "--ssh=root@10.0.0.5", f"--port={p}")
        for p in ("0", "-1", "70000", BIG_INT, "x")
    ),
    cli("host add --identity missing", "host", "add", "h1", "--ssh=root@h", "-i", "/nonexistent"),
    cli("host add --identity NUL", "host", "add", "h1", "--ssh=root@h", "-i", "/etc/\0"),
    cli("host add --known-hosts dir", "host", "add", "h1", "--ssh=root@h", "--known-hosts=/etc"),
    *(
        cli(f"host add --data {_short(d)}", "host", "add", "h1", "--ssh=root@h", f"--data={d}")
        for d in ("1.2.3.4; id", "a b", "-x", "..", "a..b")
    ),
    *(
        cli(f"host add --bmc {_short(d)}", "host", "add", "h1", "--ssh=root@h", f"--bmc={d}")
        for d in ("$(id)", "a_b", "x" * 300)
    ),
    cli("host add --hypervisor", "host", "add", "h1", "--hypervisor=kvm"),
    cli("host add --label noeq", "host", "add", "h1", "--ssh=root@h", "--label=noeq"),
    cli("host add --label NUL", "host", "add", "h1", "--ssh=root@h", "--label=a=\0"),
    cli("host show ghost", "host", "show", "ghost"),
    cli("host rm ghost", "host", "rm", "ghost"),
    cli("host doctor ghost", "host", "doctor", "ghost"),
]

# -- rumprun lines -----------------------------------------------------------------------------
RUMPRUN_LINES: list[list[str]] = [
    [],
    ["bogus", "redis"],
    ["qemu"],
    ["qemu", "-M", "abc", "redis"],
    ["qemu", "-M", "0", "redis"],
    ["qemu", "-M", BIG_INT, "redis"],
    ["qemu", "-M", "-5", "redis"],
    ["qemu", "-N", "a;b", "redis"],
    ["qemu", "-N", "", "redis"],
    ["qemu", "-N", "../x", "redis"],
    ["qemu", "-N", HUGE, "redis"],
    ["qemu", "-I", "xen0", "redis"],
    ["qemu", "-I", "xen0,xenif", "redis"],
    ["xen", "-I", "xen0,xenif,mac=zz", "redis"],
    ["xen", "-I", "xen0,xenif,mac=01:00:00:00:00:01", "redis"],
    ["xen", "-I", "xen0,xenif,bridge=a;b", "redis"],
    ["xen", "-I", "xen0,xenif,mac=00:11:22:33:44:55,mac=00:11:22:33:44:56", "redis"],
    ["xen", "-I", "0tag,xenif", "redis"],
    ["qemu", "-W", "xen0,inet,dhcp", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,inet,static,300.0.0.1/24", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,inet,static,10.0.0.1/33", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,inet,static,10.0.0.1/255.255.255.0", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,inet,static,10.0.0.1", "-N", "y", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,inet,static,10.0.0.0/24", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,inet,static,10.0.0.2/24,11.0.0.1", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,inet,auto", "redis"],
    ["qemu", "-I", "x,vioif", "-W", "x,ipx,dhcp", "redis"],
    ["qemu", "-b", "/x", "redis"],
    ["qemu", "-g", "-nographic", "redis"],
    ["qemu", "-D", "1234", "redis"],
    ["qemu", "-p", "redis"],
    ["qemu", "-d", "redis"],
    ["qemu", "-e", "NOEQ", "redis"],
    ["qemu", "-e", "A\0=b", "redis"],
    ["qemu", "-e", "A=b\0", "redis"],
    ["qemu", "-e", "1A=b", "redis"],
    ["qemu", "-Z", "redis"],
    ["qemu", "-N", "x", "Bad/Image"],
    ["qemu", "-N", "x", "nosuchimage"],
    ["qemu", "-I", "x,vioif,-net user", "redis"],
    ["xen", "-I", "x,xenif,mac=00:11:22:33:44:55,bridge=nosuchnet", "-W", "x,inet,dhcp", "redis"],
    ["qemu", "-M"],
    ["-T"],
    ["-Q", "qemu", "redis"],
    ["qemu", "redis", "--", "x" * 2000],
]
RUMPRUN: list[Case] = [
    cli(f"rumprun #{i} {_short(' '.join(a))}", "rumprun", *a) for i, a in enumerate(RUMPRUN_LINES)
]

# -- destroy / logs / ip / check / rmi / ps ----------------------------------------------------
LOOKUP_NAMES = ["ghost", "a;b", "../etc", "", "é", "a\0b", HUGE, "[/red]"]
OTHERS: list[Case] = [
    *(
        cli(f"{verb} {_short(n)}", verb, n)
        for verb in ("destroy", "logs", "ip", "check", "console")
        for n in LOOKUP_NAMES
    ),
    cli("destroy nothing", "destroy"),
    cli("logs -n x", "logs", "ghost", "-n", "x"),
    cli("logs -f -n -1", "logs", "ghost", "-f", "-n", "-1"),
    cli("check --timeout x", "check", "ghost", "--timeout=x"),
    *(
        cli(f"rmi {_short(r)}", "rmi", r)
        for r in (
            "ghost",
            "redis:nosuchtag",
            "a:b:c",
            "A",
            "../x",
            "",
            "redis:bad tag",
            "a\0",
            HUGE,
        )
    ),
    cli("rmi nothing", "rmi"),
    *(cli(f"ps --label {_short(lb)}", "ps", f"--label={lb}") for lb in ("noeq", "=v", "", "a\0=b")),
    cli("ps --host ghost", "ps", "--host=ghost"),
    cli("unknown verb", "frobnicate"),
    cli("unknown global option", "--frob", "ps"),
]


# -- the Python API ----------------------------------------------------------------------------
def _run(image: str = "redis", **kw: object) -> Callable[[Path], object]:
    def call(home: Path) -> object:
        with uniklab.Client(home) as c:
            return c.run(image, wait=False, **kw)  # type: ignore[arg-type]

    return call


def _client(fn: Callable[[uniklab.Client], object]) -> Callable[[Path], object]:
    def call(home: Path) -> object:
        with uniklab.Client(home) as c:
            return fn(c)

    return call


API: list[Case] = [
    *(api(f"api run name={_short(n)}", _run(name=n)) for n in BAD_NAMES if n),
    *(
        api(f"api run memory={m!r}"[:60], _run(memory=m))
        for m in ("lots", "8M", 2**64, 0, -1, 1.5, True, "2T", b"128M", [128])
    ),
    *(api(f"api run vcpus={v!r}", _run(vcpus=v)) for v in (0, -1, 65, 2**64, "2", 1.5, None)),
    *(
        api(f"api run publish={p!r}"[:60], _run(publish=p))
        for p in (
            [(0, 70000)],
            [(2**64, 6379)],
            [(1,)],
            [("a", "b")],
            [(6379, 0)],
            "6379:6379",
            [(7000, 6379), (7000, 6379)],
            [None],
        )
    ),
    *(
        api(f"api run env={_short(str(e))}", _run(env=e))
        for e in (
            {"A=B": "x"},
            {"A": "x\0"},
            {1: "x"},
            {"A": 1},
            {"": "x"},
            {"A B": "x"},
            {"é": "x"},
            {"A": HUGE},
            {"A\0": "x"},
            "A=B",
        )
    ),
    *(
        api(f"api run args={_short(str(a))}", _run(args=a))
        for a in ("--port 1", [1], ["a\0b"], ["x" * 2000], [HUGE], [None], ["--x"] * 1000)
    ),
    *(
        api(f"api run labels={_short(str(lb))}", _run(labels=lb))
        for lb in ({"": "x"}, {"a": 1}, {"a\0": "x"}, {"a": "x\0"}, {1: "x"})
    ),
    *(
        api(f"api run net #{i}", _run(net=n))
        for i, n in enumerate(
            (
                "bad name",
                ["lab,mac=zz"],
                NicRequest("lab", mac="zz"),
                NicRequest("a;b"),
                NicRequest("lab", ip="300.0.0.1/24"),
                NicRequest("lab", gateway="x", ip="10.0.0.2/24"),
                ["lab", "lab,foo=1"],
                3,
            )
        )
    ),
    api("api run net and publish", _run(net="lab", publish=[(7000, 6379)])),
    api("api run image ''", _run("")),
    api("api run image Bad/Image", _run("Bad/Image")),
    api("api run image unknown", _run("nosuchimage")),
    api("api run image bad tag", _run("redis:bad tag!")),
    api("api run image NUL", _run("redis\0")),
    api("api run image huge", _run(HUGE)),
    api("api run timeout -1", lambda h: uniklab.run("redis", timeout=-1, home=h)),
    api("api run timeout nan", lambda h: uniklab.run("redis", timeout=math.nan, home=h)),
    api("api module run bad name", lambda h: uniklab.run("redis", name="a b", home=h)),
    api("api bake unknown", _bake("nosuchrecipe")),
    api("api bake shell", _bake("a;b")),
    api("api bake empty", _bake("")),
    api("api bake missing file", _bake("/nonexistent.toml")),
    api("api bake bad tag", _bake("redis", "bad tag")),
    api("api bake NUL tag", _bake("redis", "a\0")),
    api("api bake NUL ref", _bake("red\0is")),
    api("api destroy ghost", lambda h: uniklab.destroy("ghost", home=h)),
    api("api get ghost", _client(lambda c: c.get("ghost"))),
    api("api image ghost", _client(lambda c: c.image("ghost"))),
    api("api image bad", _client(lambda c: c.image("a;b"))),
    api("api Client home is a file", lambda h: uniklab.Client(h / "state.db" / "x")),
    api("api Client home under /dev/null", lambda h: uniklab.images(home="/dev/null/x")),
]


def _check_cli(case: Case, home: Path, base: Baseline, capsys: pytest.CaptureFixture[str]) -> str:
    assert case.argv is not None
    capsys.readouterr()
    try:
        code = main(case.argv)
    except BaseException as exc:  # main must not let anything out
        return f"main raised {type(exc).__name__}: {str(exc)[:200]}"
    _out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    problems = []
    if code == 0:
        problems.append("exit 0")
    if "Traceback" in err:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines: {err[:300]!r}")
    elif not lines[0].startswith("error:"):
        problems.append(f"not an error line: {lines[0][:200]!r}")
    elif len(lines[0]) > 1000:
        problems.append(f"error line of {len(lines[0])} characters")
    if case.expect and case.expect not in err:
        problems.append(f"{case.expect!r} not in {err[:300]!r}")
    problems += base.leaks()
    return "; ".join(problems)


def _check_api(case: Case, home: Path, base: Baseline) -> str:
    assert case.call is not None
    problems = []
    try:
        case.call(home)
        problems.append("no error")
    except UniklabError as exc:
        if case.expect and case.expect not in str(exc):
            problems.append(f"{case.expect!r} not in {str(exc)[:200]!r}")
    except BaseException as exc:
        problems.append(f"{type(exc).__name__} (not a UniklabError): {str(exc)[:200]}")
    problems += base.leaks()
    return "; ".join(problems)


def _run_table(
    cases: list[Case], home: Path, capsys: pytest.CaptureFixture[str]
) -> list[tuple[str, str]]:
    base = Baseline.take(home)
    failed = []
    for case in cases:
        problem = (
            _check_cli(case, home, base, capsys) if case.argv else _check_api(case, home, base)
        )
        if problem:
            failed.append((case.id, problem))
            base.clean()  # so that the next case starts from the baseline
    return failed


GROUPS: dict[str, list[Case]] = {
    "run": RUN,
    "bake": BAKE,
    "net": NET,
    "host": HOST,
    "rumprun": RUMPRUN,
    "others": OTHERS,
    "api": API,
}
# Each recipe is tried through the CLI; a sample also through the API.
N_RECIPE_CASES = len(RECIPES) + 6
N_CASES = sum(len(c) for c in GROUPS.values()) + N_RECIPE_CASES


def test_there_are_enough_cases() -> None:
    assert N_CASES >= 200, N_CASES
    ids = [c.id for cases in GROUPS.values() for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"


@pytest.mark.parametrize("group", list(GROUPS))
def test_bad_inputs(group: str, fault_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failed = _run_table(GROUPS[group], fault_home, capsys)
    assert failed == [], "\n".join(f"{i}: {p}" for i, p in failed)


def test_bad_recipes(fault_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _recipe_cases(tmp_path / "recipes")
    assert len(cases) == N_RECIPE_CASES
    failed = _run_table(cases, fault_home, capsys)
    assert failed == [], "\n".join(f"{i}: {p}" for i, p in failed)
