"""Twenty CLI processes at once on one state store: runs (three racing for one name),
listings and destroys; then a hundred listings, from processes and threads, while ten runs
and destroys race.  No corruption, no "database is locked", unique names, no lost or
leaked instance."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.leaks import assert_nothing_left, qemu_processes
from tests.support.soak import cli as _cli
from tests.support.soak import race, race_figures

pytestmark = pytest.mark.e2e


def test_parallel_run_ps_destroy(lab_home: Path) -> None:
    names = [f"p{i}" for i in range(8)]
    jobs = [("run", "redis", "--name", n, "--no-wait") for n in names]
    jobs += [("run", "redis", "--name", "p0", "--no-wait")] * 2  # racing for a taken name
    jobs += [("ps", "--json")] * 10
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda a: _cli(lab_home, *a), jobs))
    runs, ps = results[:10], results[10:]
    assert all(r.returncode == 0 for r in runs[1:8]), [r.stderr for r in runs[1:8]]
    # p0 was wanted three times: exactly one won, the others were told why
    p0 = [runs[0], *runs[8:]]
    assert sorted(r.returncode for r in p0) == [0, 4, 4], [r.stderr for r in p0]
    assert all("already exists" in r.stderr for r in p0 if r.returncode == 4)
    assert all(r.returncode == 0 for r in ps), [r.stderr for r in ps]
    for r in ps:
        json.loads(r.stdout)  # every listing was whole JSON
    listed = json.loads(_cli(lab_home, "ps", "--json").stdout)
    assert sorted(i["name"] for i in listed) == sorted(names)
    assert all(i["state"] == "running" for i in listed)
    ports = [p["host"] for i in listed for p in i["ports"]]
    assert len(ports) == len(set(ports)) == 8, "two instances got the same host port"
    assert len(qemu_processes(str(lab_home))) == 8

    jobs = [("destroy", n) for n in names] + [("ps", "--json")] * 12
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda a: _cli(lab_home, *a), jobs))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    assert json.loads(_cli(lab_home, "ps", "--json").stdout) == []
    assert_nothing_left(lab_home)


def test_ps_races_runs_and_destroys(lab_home: Path) -> None:
    """100 `python -m uniklab ps --json` (8 at a time) and in-process ps in threads (some
    through the module-level ``uniklab.ps``, a client per call) while 10 runs and
    destroys race: every listing shows each instance from its run's success to its
    destroy, and none after; no "database is locked"; nothing left."""
    r = race(lab_home, "redis", runs=10, ps_cli=100, ps_pool=8)
    print("\n".join(race_figures(r)))
    assert r.locked == []
    assert r.failed == []
    assert r.lost == []
    assert all(life.destroy_ok is not None for life in r.lives)
    assert r.witnessed > 0, "no listing overlapped a running instance: the race tested nothing"
    assert json.loads(_cli(lab_home, "ps", "--json").stdout) == []
    assert_nothing_left(lab_home)
