"""`uniklab gc` on Xen hosts: this home's domains and configs that no row explains go,
everything else stays, and a host that does not answer is one line that holds up nothing.

The Xen host answers as the virtual one did when recorded (tests.backends.test_xen_recorded);
the unreachable host is a real ssh to a port where nothing listens."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.test_xen_recorded import RecordedXenHost, StubbornXenHost
from uniklab import gc
from uniklab.backends import xen
from uniklab.cli.main import main
from uniklab.executor import Executor
from uniklab.hosts.inventory import Host
from uniklab.lab import Lab
from uniklab.paths import Paths


@pytest.fixture
def lab(home: Path) -> Iterator[Lab]:
    lab = Lab(Paths(home))
    # TEST-NET-1: never contacted, the recorded host answers in its place.
    lab.hosts.add(name="xenhost", ssh="root@192.0.2.7", hypervisor="xen")
    yield lab
    lab.close()


def _instance(lab: Lab, name: str, host: str = "xenhost") -> None:
    """A row of this home on ``host`` (left 'creating' by this live process: reconcile
    leaves it be, and never asks the host about it)."""
    lab.store.reserve(
        name=name,
        image="redis:latest",
        digest="sha256:00",
        backend="xen",
        host=host,
        memory_mb=128,
        vcpus=1,
        owner_pid=os.getpid(),
        spec={},
        labels={},
    )


def test_gc_takes_this_homes_unexplained_domains_only(lab: Lab) -> None:
    host = RecordedXenHost(owner=xen.owner_tag(lab.paths.run))

    def connect(h: Host) -> Executor:
        assert h.name in ("xenhost", "local")
        return host if h.name == "xenhost" else lab.hosts.executor(h)

    _instance(lab, "keep")
    sweep = gc.find(lab, connect=connect)
    assert sweep.problems == []
    assert [(i.kind, i.name, i.host, i.domid) for i in sweep.items] == [
        ("domain-cfg", "ghost", "xenhost", None),
        ("domain", "orphan", "xenhost", 2),
    ]
    assert gc.remove(lab, sweep.items, connect=connect) == {}
    assert ["xl", "destroy", "2"] in host.calls
    # Kept: the row's domain, another home's config, an unlabelled one.
    assert sorted(host.cfgs) == ["keep.cfg", "legacy.cfg", "other.cfg"]
    assert [ln.split()[0] for ln in host.domains] == ["Name", "Domain-0", "keep"]
    assert gc.find(lab, connect=connect).items == []


def test_a_domain_that_will_not_go_is_reported(lab: Lab) -> None:
    host = StubbornXenHost(owner=xen.owner_tag(lab.paths.run))
    _instance(lab, "keep")
    def connect(h: Host) -> Executor:
        return host if h.name == "xenhost" else lab.hosts.executor(h)

    sweep = gc.find(lab, connect=connect)
    failed = gc.remove(lab, sweep.items, connect=connect)
    assert [(i.name, why) for i, why in failed.items()] == [
        (
            "orphan",
            "domain orphan on xenhost not removed: xl exited 1 on xenhost: libxl: error: busy",
        )
    ]
    assert sorted(host.cfgs) == ["keep.cfg", "legacy.cfg", "orphan.cfg", "other.cfg"]


def test_an_unreachable_host_is_one_line_and_blocks_nothing(lab: Lab) -> None:
    lab.hosts.add(name="dead", ssh="root@127.0.0.1", port=1, hypervisor="xen")
    host = RecordedXenHost(owner=xen.owner_tag(lab.paths.run))
    (lab.paths.images / ".tmp-1-deadbeef").mkdir()
    _instance(lab, "keep")

    def connect(h: Host) -> Executor:
        return host if h.name == "xenhost" else lab.hosts.executor(h)

    start = time.monotonic()
    sweep = gc.find(lab, connect=connect)
    assert time.monotonic() - start < gc.HOST_TIMEOUT
    [line] = sweep.problems
    assert line.startswith("host dead not swept: dead: ssh failed: ") and "\n" not in line
    assert sorted(i.kind for i in sweep.items) == ["domain", "domain-cfg", "staging"]


def test_cli_reports_a_dead_host_in_one_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["host", "add", "dead", "--ssh", "root@127.0.0.1", "--port", "1"]) == 0
    (home / "images" / ".tmp-1-deadbeef").mkdir()
    capsys.readouterr()
    assert main(["gc"]) == 1
    out, err = capsys.readouterr()
    assert "removed staging" in out and not (home / "images" / ".tmp-1-deadbeef").exists()
    assert err.count("\n") == 1 and "host dead not swept: dead: ssh failed:" in err
