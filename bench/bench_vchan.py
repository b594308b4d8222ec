"""Xen channels (vchan) against the network path, on the virtual Xen host, in one run.

One Redis domU with both a NIC on the dom0's xenbr0 (DHCP) and a vchan channel to 6379;
from this machine, each path has one ssh hop to the dom0 (how uniklab reaches a Xen host):
  channel: <rundir>/chan-6379.sock -> ssh streamlocal -> uniklab-vchan --listen -> vchan ->
           uniklab-vchan -> 127.0.0.1:6379 in the guest
  network: 127.0.0.1:P -> ssh TCP forward -> dom0 -> vif/xenbr0/netfront -> guest:6379
Prints PING round trips (p50/p99, one connection) and SET throughput (1 KB, 100 KB
values), and the channel/network ratios.  Usage:
  python bench/bench_vchan.py [--pings 500] [--sets 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from uniklab.cli.main import main
from uniklab.errors import NotFoundError
from uniklab.hosts.ssh import SshExecutor
from uniklab.lab import Lab, RunOptions
from uniklab.net.attach import NicRequest
from uniklab.paths import Paths

LAB = "xenlab-bench"
PORT = 6379
READY = 180.0


def _wait(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except (redis.RedisError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def measure(client: redis.Redis, pings: int, sets: int) -> dict[str, float]:
    client.ping()
    rtts = []
    for _ in range(pings):
        t = time.perf_counter()
        client.ping()
        rtts.append((time.perf_counter() - t) * 1000)
    q = statistics.quantiles(rtts, n=100)
    out = {"ping_p50_ms": statistics.median(rtts), "ping_p99_ms": q[98]}
    for label, size in (("1k", 1024), ("100k", 100 * 1024)):
        value = b"x" * size
        t = time.perf_counter()
        for i in range(sets):
            client.set(f"k{i}", value)
        out[f"set_{label}_per_s"] = sets / (time.perf_counter() - t)
    return out


def run(pings: int, sets: int) -> dict[str, dict[str, float]]:
    home = Path(tempfile.mkdtemp(prefix="ukl-bv-", dir="/tmp"))
    os.environ["UNIKLAB_HOME"] = str(home)
    lab = Lab(Paths(home))
    try:
        lab.bake("redis")
        assert main(["lab", "up", "--name", LAB]) == 0
        dom0 = lab.hosts.executor(lab.hosts.get(LAB))
        assert isinstance(dom0, SshExecutor)
        # Ready once its probe passed over the network path; the channel is the same guest's.
        opts = RunOptions(
            name="bench", host=LAB, net=[NicRequest("xenbr0")], channels=[PORT], memory="128M"
        )
        lab.run("redis", opts)
        chan = redis.Redis(unix_socket_path=str(lab.channel("bench", PORT)), socket_timeout=30)
        _wait("PONG over the channel", chan.ping, READY)
        results = {"channel": measure(chan, pings, sets)}
        chan.close()
        ip = lab.ip("bench").host
        with dom0.forward(ip, PORT) as (host, port):
            net = redis.Redis(host, port, socket_timeout=30)
            _wait("PONG over the network", net.ping, 60)
            results["network"] = measure(net, pings, sets)
            net.close()
        return results
    finally:
        with contextlib.suppress(NotFoundError):
            lab.destroy("bench")
        lab.close()
        main(["lab", "down", "--name", LAB])
        shutil.rmtree(home, ignore_errors=True)


def report(results: dict[str, dict[str, float]]) -> str:
    keys = list(results["channel"])
    lines = ["| | channel (vchan) | network (vif) | channel / network |", "|---|---|---|---|"]
    for k in keys:
        c, n = results["channel"][k], results["network"][k]
        lines.append(f"| {k} | {c:.2f} | {n:.2f} | {c / n:.2f} |")
    return "\n".join(lines)


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=500)
    ap.add_argument("--sets", type=int, default=200)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    results = run(a.pings, a.sets)
    print(report(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main_()
