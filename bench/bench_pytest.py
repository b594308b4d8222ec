"""Time a pytest session of N tests that each get a fresh Redis (the ``unikernel`` fixture)
against the same N tests that each get a plain ``redis-server`` process on 127.0.0.1, in
one run: a unikernel booted per test with the host's kernel, booted with the specialised
kernel (erofs root), and cloned from a template; each also under pytest-xdist ``-n 2``.
Images (and the template) are made first, their time printed apart, so every session
measures start + test + teardown per test.

Usage: python bench/bench_pytest.py [--tests 20] [--memory 128M] [--json out.json]
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

from uniklab.kernel import build as kbuild
from uniklab.kernel import config as kconfig

BOOT: dict[str, object] = {"boot": True}  # the fixture's opt-out of clones: a real boot

TESTS = """
import json, os, socket, subprocess, time

import pytest
import redis

N = int({n})
MEMORY = {memory!r}
KW = json.loads(os.environ.get("UKB_KW", "{{}}"))  # the fixture's options for this session


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
    work(unikernel("redis", memory=MEMORY, **KW).redis())
"""


def session(
    workdir: Path, home: Path, select: str, *, workers: int = 0, env: dict[str, str] | None = None
) -> float:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    argv += ["--uniklab-home", str(home), "-k", select, str(workdir / "test_bench.py")]
    start = time.monotonic()
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=workdir,
        env={**os.environ, **(env or {})},
    )
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"pytest -k {select} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--memory", default="128M")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("needs redis-server on this host (apt-get install redis-server)")
    if kbuild.cached(kconfig.DEFAULT_PROFILE) is None:
        sys.exit("needs the specialised kernel: uniklab kernel build")
    home = Path(tempfile.mkdtemp(prefix="ukb-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="ukb-t-", dir="/tmp"))
    no_kernel = work / "no-kernels"  # a machine without the specialised kernel
    no_kernel.mkdir()
    generic = {"UNIKLAB_KERNEL_CACHE": str(no_kernel), "UKB_KW": json.dumps(BOOT)}
    fast = {"UKB_KW": json.dumps(BOOT)}
    clone = {"UKB_KW": "{}"}  # the plugin's default: a clone of the template
    sessions = [
        ("redis-server process", "native", {}),
        ("unikernel, boot, host kernel", "unikernel", generic),
        ("unikernel, boot, specialised", "unikernel", fast),
        ("unikernel, clone", "unikernel", clone),
    ]
    seconds: dict[str, float] = {}
    try:
        (work / "test_bench.py").write_text(TESTS.format(n=a.tests, memory=a.memory))
        # Warm-up: bake both images and make the template (one test each), timed apart.
        (work / "test_warm.py").write_text(
            "def test_warm(unikernel):\n"
            "    import json, os\n"
            f"    unikernel('redis', memory={a.memory!r}, **json.loads(os.environ['UKB_KW']))\n"
        )
        warm = {}
        for label, env in (("host kernel", generic), ("specialised", fast), ("template", clone)):
            start = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "-p",
                    "no:xdist",
                    "--uniklab-home",
                    str(home),
                    str(work / "test_warm.py"),
                ],
                check=True,
                capture_output=True,
                timeout=1800,
                cwd=work,
                env={**os.environ, **env},
            )
            warm[label] = time.monotonic() - start
        (work / "test_warm.py").unlink()
        for workers in (0, 2):
            for label, select, env in sessions:
                key = f"{label}, -n {workers}" if workers else label
                seconds[key] = session(work, home, select, workers=workers, env=env)
                print(f"{key:42s} {seconds[key]:7.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    accel = os.environ.get("UNIKLAB_ACCEL", "auto")
    result: dict[str, object] = {
        "tests": a.tests,
        "memory": a.memory,
        "accel": accel,
        "warm_up_seconds": {k: round(v, 2) for k, v in warm.items()},
        "session_seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    print(f"\npytest, {a.tests} tests each with a fresh Redis ({a.memory}), accel {accel}:")
    print(f"{'session':42s} {'wall (s)':>9s} {'per test':>9s} {'/ process':>10s}")
    for workers in (0, 2):
        suffix = f", -n {workers}" if workers else ""
        native = seconds["redis-server process" + suffix]
        for label, _, _ in sessions:
            took = seconds[label + suffix]
            print(f"{label + suffix:42s} {took:9.2f} {took / a.tests:9.2f} {took / native:9.1f}x")
    result["ratios_to_process"] = {
        k: round(v / seconds["redis-server process" + (", -n 2" if "-n 2" in k else "")], 2)
        for k, v in seconds.items()
    }
    for k, v in warm.items():
        print(f"warm-up ({k}, before the sessions): {v:.2f} s")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
