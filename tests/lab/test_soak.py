"""A short soak: run/destroy cycles through long-lived API clients, three at once, each
guest PINGed before it goes; then nothing may have grown (descriptors, taps, bridges,
leases, processes naming the home, runtime directories, rows, disk use).  The long one,
with its figures, is ``bench/bench_soak.py``; both use ``tests/support/soak.py``.  And a client
made per call (``uniklab.ps()``) gives its descriptors back at once."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

import uniklab
from tests.support import soak
from tests.support.leaks import assert_nothing_left
from uniklab.lab import Lab
from uniklab.net import netns
from uniklab.net.service import NetworkSpec

pytestmark = pytest.mark.e2e

NS = f"uklsoakt{os.getpid() % 10000}"


def _check(r: soak.SoakResult) -> None:
    print(f"{r.cycles} cycles in {r.seconds:.0f}s: {r.per_minute:.1f} cycles/minute")
    print(soak.leak_table(r.growth))
    assert r.failures == []
    assert sum(len(d) for d in r.durations.values()) == r.cycles
    assert [g.resource for g in r.leaked] == [], "\n" + soak.leak_table(r.growth)


def test_soak_user_mode(lab_home: Path) -> None:
    _check(soak.soak(lab_home, "redis", soak.interleave(20, 0), concurrency=3))
    assert_nothing_left(lab_home)


@pytest.mark.root
def test_soak_bridged(lab: Lab, lab_home: Path) -> None:
    lab.networks.create(NetworkSpec("soak", "10.78.0.0/24", None, NS))
    try:
        r = soak.soak(
            lab_home, "redis", soak.interleave(0, 10), concurrency=3, network="soak", netns=NS
        )
    finally:
        lab.networks.rm("soak", [])
    _check(r)
    assert not netns.exists(NS)
    assert_nothing_left(lab_home)
    assert soak.snapshot(lab_home).resources["processes"] == {}  # no dnsmasq, no socat


def test_module_level_ps_closes_its_store(home: Path) -> None:
    """``uniklab.ps()`` makes a client per call, whose store must close when its instances
    are dropped, not when the cyclic collector runs: a long-lived process that lists
    every second would otherwise pile up descriptors (two per call)."""
    collecting = gc.isenabled()
    keep = uniklab.Client(home)  # a long-lived client of the same process
    try:
        uniklab.ps(home=home)
        gc.collect()
        gc.disable()
        before = soak.snapshot(home)
        for _ in range(30):
            uniklab.ps(home=home)
        after = soak.snapshot(home)
    finally:
        if collecting:
            gc.enable()
        keep.close()
    [fds] = [g for g in soak.compare(before, after) if g.resource == "fds"]
    assert fds.grown == [], f"{fds.before} -> {fds.after} descriptors"
