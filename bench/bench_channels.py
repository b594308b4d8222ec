"""Redis over a channel (virtio-serial, no NIC) vs over the network, side by side, one run.

Three guests of one image run at once: one with ``--net none`` reached over its channel's
UNIX socket, one on user-mode networking with its port forwarded to 127.0.0.1, and (as
root) one on a bridged tap inside a network namespace this script creates and removes.
The same redis-py client measures each path in interleaved rounds: PING round trips
(p50/p99) and SET throughput of 1 KB and 100 KB values.  Ratios are against user-mode.

Usage: python bench/bench_channels.py [--rounds 3] [--pings 1000] [--no-tap] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from uniklab.lab import Lab, RunOptions
from uniklab.net import netns
from uniklab.net.attach import NicRequest
from uniklab.net.service import NetworkSpec
from uniklab.paths import Paths

NS = f"uklchb{os.getpid() % 10000}"
SIZES = {"1KB": (1024, 400), "100KB": (100 * 1024, 60)}  # value size, SETs per round


def _client(lab: Lab, name: str, path: str) -> Callable[[], redis.Redis]:
    if path == "channel":
        sock = str(lab.channel(name, 6379))
        return lambda: redis.Redis(unix_socket_path=sock, protocol=2, socket_timeout=30)
    if path == "user":
        port = lab.ip(name).ports[0][0]
        return lambda: redis.Redis("127.0.0.1", port, protocol=2, socket_timeout=30)
    ip = lab.ip(name, timeout=60).host
    return lambda: redis.Redis(ip, 6379, protocol=2, socket_timeout=30)


def _pings(r: redis.Redis, n: int) -> list[float]:
    r.ping()  # connect first
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r.ping()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def _sets(r: redis.Redis, size: int, n: int) -> float:
    """MB/s of ``n`` SETs of ``size`` bytes, one after another (each waits for its OK)."""
    value = os.urandom(size)
    r.ping()
    t = time.perf_counter()
    for i in range(n):
        r.set(f"bench:{i % 16}", value)
    return size * n / (time.perf_counter() - t) / 1e6


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pings", type=int, default=1000, help="PINGs per path per round")
    ap.add_argument("--no-tap", action="store_true", help="skip the bridged tap (needs root)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tap = not args.no_tap and os.geteuid() == 0
    home = Path(tempfile.mkdtemp(prefix="ukl-chb-", dir="/tmp"))
    lab = Lab(Paths(home))
    paths = ["channel", "user", *(["tap"] if tap else [])]
    try:
        lab.bake("redis")
        lab.run("redis", RunOptions(name="over-channel", net="none"))
        lab.run("redis", RunOptions(name="over-user"))
        if tap:
            lab.networks.create(NetworkSpec("chb", "10.89.0.0/24", None, NS))
            lab.run("redis", RunOptions(name="over-tap", net=[NicRequest("chb")]))
        clients = {p: _client(lab, f"over-{p}", p) for p in paths}
        pings: dict[str, list[float]] = {p: [] for p in paths}
        sets: dict[str, dict[str, list[float]]] = {p: {s: [] for s in SIZES} for p in paths}
        for _ in range(args.rounds):
            for p in paths:  # interleaved: host load drifts alike for every path
                with netns.inside(NS if p == "tap" else None):
                    r = clients[p]()
                    pings[p] += _pings(r, args.pings)
                    for label, (size, n) in SIZES.items():
                        sets[p][label].append(_sets(r, size, n))
                    r.close()
        rows = {
            p: {
                "ping_p50_us": statistics.median(pings[p]),
                "ping_p99_us": _pct(pings[p], 0.99),
                **{f"set_{s}_MBps": statistics.median(sets[p][s]) for s in SIZES},
            }
            for p in paths
        }
        _report(rows, args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
        if tap:
            lab.networks.rm("chb", [])
        lab.close()
        shutil.rmtree(home, ignore_errors=True)


def _report(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    cols = list(next(iter(rows.values())))
    print(
        f"# bench_channels: {args.rounds} rounds x {args.pings} PINGs per path, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    print("| path | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for p, row in rows.items():
        print(f"| {p} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    print()
    user = rows["user"]
    for p, row in rows.items():
        if p != "user":
            ratios = ", ".join(f"{c} {row[c] / user[c]:.2f}x" for c in cols)
            print(f"- {p} / user-mode: {ratios}")


if __name__ == "__main__":
    main()
