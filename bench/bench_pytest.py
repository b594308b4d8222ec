"""Time a pytest session of N tests that each get a fresh Redis unikernel (the ``unikernel``
fixture) against the same N tests that each get a plain ``redis-server`` process on
127.0.0.1, in one run.  The image is baked first (and its time printed apart), so both
sessions measure start + test + teardown per test.

Usage: python bench/bench_pytest.py [--tests 5] [--memory 128M] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from uniklab.api import Client

TESTS = """
import socket, subprocess, time

import pytest
import redis

N = int({n})
MEMORY = {memory!r}


def work(r: redis.Redis) -> None:
    assert r.ping()
    for i in range(100):
        r.set(f"k{{i}}", i)
    assert r.get("k99") == b"99" and r.dbsize() == 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def native():
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        r = redis.Redis("127.0.0.1", port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        yield r
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("i", range(N))
def test_native(native, i):
    work(native)


@pytest.mark.parametrize("i", range(N))
def test_unikernel(unikernel, i):
    work(unikernel("redis", memory=MEMORY).redis())
"""


def session(workdir: Path, home: Path, select: str) -> float:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    argv += ["--uniklab-home", str(home), "-k", select, str(workdir / "test_bench.py")]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=workdir)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"pytest -k {select} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=5)
    ap.add_argument("--memory", default="128M")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("needs redis-server on this host (apt-get install redis-server)")
    home = Path(tempfile.mkdtemp(prefix="ukb-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="ukb-t-", dir="/tmp"))
    try:
        (work / "test_bench.py").write_text(TESTS.format(n=a.tests, memory=a.memory))
        start = time.monotonic()
        with Client(home) as c:
            c.bake("redis")
        bake = time.monotonic() - start
        native = session(work, home, "native")
        uni = session(work, home, "unikernel")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    accel = os.environ.get("UNIKLAB_ACCEL", "auto")
    result = {
        "tests": a.tests,
        "memory": a.memory,
        "accel": accel,
        "bake_seconds": round(bake, 2),
        "native_session_seconds": round(native, 2),
        "unikernel_session_seconds": round(uni, 2),
        "ratio": round(uni / native, 1),
        "unikernel_per_test_seconds": round(uni / a.tests, 2),
    }
    print(f"bake (before the sessions):        {bake:6.2f} s")
    print(f"pytest, {a.tests} tests, redis-server:    {native:6.2f} s wall")
    print(f"pytest, {a.tests} tests, unikernel:       {uni:6.2f} s wall")
    print(f"ratio unikernel / redis-server:    {uni / native:6.1f}x")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
