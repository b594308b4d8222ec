"""Time from `run` to an address being known and to Redis PONG, DHCP vs static, in one run.

Everything happens inside a network namespace this script creates and removes (root).
Usage: python bench/bench_network.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis

from uniklab.errors import NotFoundError
from uniklab.lab import Lab, RunOptions
from uniklab.net import netns
from uniklab.net.attach import NicRequest
from uniklab.net.service import NetworkSpec
from uniklab.paths import Paths

NS = f"uklbench{os.getpid() % 10000}"


def one(lab: Lab, name: str, nic: NicRequest) -> tuple[float, float, str]:
    start = time.monotonic()
    lab.run("redis", RunOptions(name=name, net=[nic], wait=False))
    addr_at = None
    source = ""
    ip = ""
    while time.monotonic() - start < 120:
        if addr_at is None:
            try:
                info = lab.ip(name, timeout=0.5)
                addr_at, ip, source = time.monotonic() - start, info.host, info.source
            except NotFoundError:
                continue
        try:
            with netns.inside(NS):
                ok = redis.Redis(ip, 6379, socket_timeout=1, socket_connect_timeout=1).ping()
            if ok:
                pong_at = time.monotonic() - start
                lab.destroy(name)
                return addr_at, pong_at, source
        except redis.RedisError:
            time.sleep(0.05)
    raise TimeoutError(name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ukl-nb-", dir="/tmp"))
    lab = Lab(Paths(home))
    lab.bake("redis")
    lab.networks.create(NetworkSpec("bench", "10.88.0.0/24", "xenbr0", NS))
    results: dict[str, list[tuple[float, float, str]]] = {"dhcp": [], "static": []}
    try:
        for i in range(args.rounds):
            results["dhcp"].append(one(lab, f"d{i}", NicRequest("bench")))
            results["static"].append(one(lab, f"s{i}", NicRequest("bench", ip=f"10.88.0.{20 + i}")))
        print(
            f"{'addressing':10} {'run->address (median)':>22} {'run->PONG (median)':>20}  found by"
        )
        for kind, rows in results.items():
            addr = statistics.median(r[0] for r in rows)
            pong = statistics.median(r[1] for r in rows)
            print(f"{kind:10} {addr:>21.2f}s {pong:>19.2f}s  {rows[0][2]}  (n={len(rows)})")
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
        lab.networks.rm("bench", [])
        lab.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
