"""The rumprun config uniklab writes, read back by rumprun's own code: jsmn.c and
parseargs.c from the pinned rumprun sources, compiled with ASan/UBSan into a small harness
(``rumprun_cfg_harness.c``) that prints what config.c would take from the document."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniklab.guest.rumprun import RumprunConfig, RumprunNet
from uniklab.toolchain import sources

HARNESS_C = Path(__file__).with_name("rumprun_cfg_harness.c")
FILES = (
    "rumprun/include/bmk-core/jsmn.h",
    "rumprun/include/bmk-core/null.h",
    "rumprun/include/rumprun-base/parseargs.h",
    "rumprun/lib/libbmk_core/jsmn.c",
    "rumprun/lib/librumprun_base/parseargs.c",
)
VIOIF = {
    "netif": "vioif",
    "cloner": False,
    "blk": lambda i: {"source": "dev", "path": f"/dev/ld{i}a"},
}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (apt-get install build-essential)")
    work = tmp_path_factory.mktemp("rumprun-cfg")
    tarball = sources.tarball(sources.RUMPRUN)  # the pinned sources; CI has them
    subprocess.run(["tar", "-xJf", tarball, "-C", work, *FILES], check=True, timeout=300)
    out = work / "harness"
    top = work / "rumprun"
    subprocess.run(
        ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         f"-I{top / 'include'}", "-o", out, HARNESS_C,
         top / "lib/libbmk_core/jsmn.c", top / "lib/librumprun_base/parseargs.c"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def read_back(harness: Path, doc: str) -> list[tuple[str, str]]:
    res = subprocess.run(
        [harness], input=doc.encode(), capture_output=True, timeout=30, check=False
    )
    assert res.returncode == 0, (doc, res.stdout, res.stderr)
    out = []
    for line in res.stdout.decode().splitlines():
        key, _, value = line.partition(" ")
        out.append((key, bytes.fromhex(value).decode()))
    return out


def test_redis_config_as_rumprun_reads_it(harness: Path) -> None:
    cfg = RumprunConfig(
        argv=["redis-server", "/data/conf/redis.conf"],
        env={"TZ": "UTC"},
        hostname="redis",
        net=[RumprunNet(method="static", addr="10.0.2.15/24", gw="10.0.2.2")],
        mounts=["/data"],
    )
    got = read_back(harness, cfg.render(**VIOIF))  # type: ignore[arg-type]
    assert got == [
        ("blk.source", "dev"),
        ("blk.path", "/dev/ld0a"),
        ("blk.fstype", "blk"),
        ("blk.mountpoint", "/data"),
        ("env", "TZ=UTC"),
        ("net.if", "vioif0"),
        ("net.type", "inet"),
        ("net.method", "static"),
        ("net.addr", "10.0.2.15"),
        ("net.mask", "24"),
        ("net.gw", "10.0.2.2"),
        ("cmdline", "redis-server /data/conf/redis.conf"),
        ("argv", "redis-server"),
        ("argv", "/data/conf/redis.conf"),
        ("hostname", "redis"),
    ]


def test_xen_words_dhcp_and_cloner(harness: Path) -> None:
    cfg = RumprunConfig(argv=["hello"], net=[RumprunNet()])
    kernfs = {"source": "dev", "path": "virtual", "fstype": "kernfs", "mountpoint": "/kern"}
    doc = cfg.render(
        netif="xenif", cloner=True, blk=lambda i: {"source": "etfs"}, extra_blk=[kernfs]
    )
    got = dict(read_back(harness, doc))
    assert got["net.if"] == "xenif0" and got["net.cloner"] == "true"
    assert got["net.method"] == "dhcp" and "net.addr" not in got
    assert got["blk.fstype"] == "kernfs"


ARG = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="'\x7f"), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ARG, min_size=1, max_size=6))
def test_any_argv_reaches_the_app_unchanged(harness: Path, argv: list[str]) -> None:
    cfg = RumprunConfig(argv=argv)
    got = [v for k, v in read_back(harness, cfg.render(**VIOIF)) if k == "argv"]  # type: ignore[arg-type]
    assert got == argv


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"argv": []}, "program name"),
        ({"argv": ["a'b"]}, "single quote"),
        ({"argv": ["a\nb"]}, "control character"),
        ({"argv": ["x"], "env": {"A": 'say "hi"'}}, "quotes"),
        ({"argv": ["x"], "env": {"1A": "v"}}, "variable name"),
        ({"argv": ["x"], "net": [{}, {}]}, "one network interface"),
        ({"argv": ["x"], "mounts": ["data"]}, "mount point"),
    ],
)
def test_what_rumprun_cannot_carry_is_refused(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RumprunConfig.model_validate(fields)


def test_a_command_line_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than"):
        RumprunConfig(argv=["x" * 4000]).cmdline()
