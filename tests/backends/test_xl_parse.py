"""xl's outputs as recorded from a real Xen 4.17 (the virtual lab host), parsed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniklab.backends import xl_parse
from uniklab.errors import UniklabError

FIX = Path(__file__).parent.parent / "fixtures" / "xen"


def test_xl_list() -> None:
    doms = xl_parse.parse_list((FIX / "xl_list.txt").read_text())
    assert [(d.name, d.domid, d.mem_mb, d.vcpus, d.state) for d in doms] == [
        ("Domain-0", 0, 1024, 1, "r-----"),
        ("redis", 1, 128, 1, "-b----"),
    ]
    assert doms[1].status == "blocked" and doms[0].status == "running"
    assert doms[1].cpu_seconds == pytest.approx(8.5)


def test_xl_list_dom0_only() -> None:
    doms = xl_parse.parse_list((FIX / "xl_list_dom0_only.txt").read_text())
    assert [d.name for d in doms] == ["Domain-0"]


def test_xl_list_long() -> None:
    cfgs = {c.name: c for c in xl_parse.parse_list_long((FIX / "xl_list_l.json").read_text())}
    r = cfgs["redis"]
    assert (r.domid, r.memory_mb, r.vcpus) == (1, 128, 1)
    assert r.macs == ("00:11:22:33:44:55",) and r.bridges == ("xenbr0",)
    assert r.extra is not None and "uniklab.config=" in r.extra
    assert cfgs["Domain-0"].domid == 0


def test_xl_list_long_of_one_domain_says_what_a_clone_repeats() -> None:
    # `xl list -l DOMID` of a template (redis-static:xen, 64 MB) just before `xl save`.
    [t] = xl_parse.parse_list_long((FIX / "xl_list_l_template.json").read_text())
    assert (t.name, t.domid, t.memory_mb, t.vcpus) == ("tpl2", 10, 64, 1)
    assert t.kernel is not None and t.kernel.startswith("/var/lib/uniklab/blobs/")
    assert t.ramdisk is not None and t.ramdisk.startswith("/var/lib/uniklab/blobs/")
    assert t.extra is not None and t.extra.startswith("console=hvc0 reboot=t")
    assert t.macs == ("52:54:00:b6:a6:79",)


def test_xl_info() -> None:
    info = xl_parse.parse_info((FIX / "xl_info.txt").read_text())
    assert info["xen_major"] == "4" and info["xen_minor"] == "17"
    assert int(info["free_memory"]) > 0 and int(info["total_memory"]) >= int(info["free_memory"])


@pytest.mark.parametrize("text", ["", "garbage", "Name ID\nfoo", "[1, 2"])
def test_bad_outputs_raise_uniklab_errors(text: str) -> None:
    with pytest.raises(UniklabError):
        xl_parse.parse_list(text)
    if text.startswith("["):
        with pytest.raises(UniklabError):
            xl_parse.parse_list_long(text)


@given(st.text(max_size=300))
def test_parsers_never_crash(text: str) -> None:
    """Any output: a result or a UniklabError, nothing else."""
    for parse in (xl_parse.parse_list, xl_parse.parse_list_long, xl_parse.parse_info):
        with contextlib.suppress(UniklabError):
            parse(text)
