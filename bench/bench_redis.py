"""Benchmark the Redis image against a plain redis-server process, in one run.

Prints: bake time (cold, cached), image sizes, boot-to-PONG, QEMU resident memory, the
smallest guest memory at which Redis still answers, and the same figures for redis-server
run natively on this host.  Usage: python bench/bench_redis.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from uniklab.backends.hostinfo import choose_accel
from uniklab.bake.elf import elf_closure
from uniklab.errors import UniklabError
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

REDIS = Path("/usr/bin/redis-server")


def _ping_until(port: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if redis.Redis("127.0.0.1", port, socket_timeout=1).ping():
                return time.monotonic() - start
        except redis.RedisError:
            time.sleep(0.01)
    raise TimeoutError("no PONG")


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096


def boots(lab: Lab, memory: str, timeout: float = 60) -> tuple[bool, float, int]:
    """Boot once with ``memory``; (answered, seconds from run to PONG, QEMU RSS)."""
    start = time.monotonic()
    try:
        view = lab.run("redis", RunOptions(name="bench", memory=memory, timeout=timeout))
    except UniklabError:
        return False, 0.0, 0
    took = time.monotonic() - start
    rss = _rss(view.row.pid) if view.row.pid else 0
    lab.destroy("bench")
    return True, took, rss


def memory_floor(lab: Lab, lo: int = 32, hi: int = 256, step: int = 8) -> int:
    """Smallest memory (MiB, multiple of step) at which Redis answers; binary search."""
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        ok, _, _ = boots(lab, f"{mid}M", timeout=40)
        print(f"  memory {mid}M: {'serves' if ok else 'fails'}", flush=True)
        if ok:
            hi = mid
        else:
            lo = mid
    return hi


def native() -> dict[str, float]:
    port = 16399
    proc = subprocess.Popen(
        [
            str(REDIS),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        took = _ping_until(port, 10)
        libs = elf_closure([REDIS.resolve()])
        size = REDIS.resolve().stat().st_size + sum(p.stat().st_size for p in libs.values())
        return {"start_to_pong_s": took, "rss_mb": _rss(proc.pid) / 2**20, "size_mb": size / 2**20}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--boots", type=int, default=3)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ukl-bench-", dir="/tmp"))
    lab = Lab(Paths(home))
    try:
        t = time.monotonic()
        cold = lab.bake("redis")
        cold_s = time.monotonic() - t
        t = time.monotonic()
        lab.bake("redis")
        cached_s = time.monotonic() - t
        m = cold.manifest
        accel, _ = choose_accel(None)
        runs = [boots(lab, m.memory) for _ in range(args.boots)]
        ok_runs = [r for r in runs if r[0]]
        boot_s = sorted(r[1] for r in ok_runs)[len(ok_runs) // 2] if ok_runs else float("nan")
        rss = max((r[2] for r in ok_runs), default=0) / 2**20
        print("searching the memory floor...", flush=True)
        floor = memory_floor(lab)
        ref = native()
        result = {
            "accel": accel,
            "bake_cold_s": round(cold_s, 3),
            "bake_cached_s": round(cached_s, 3),
            "kernel_mb": round(m.kernel_size / 2**20, 2),
            "initrd_mb": round(m.initrd_size / 2**20, 2),
            "image_mb": round(m.size / 2**20, 2),
            "boots_ok": f"{len(ok_runs)}/{len(runs)}",
            "run_to_pong_s_median": round(boot_s, 2),
            "qemu_rss_mb": round(rss, 1),
            "memory_floor_mb": floor,
            "native": {k: round(v, 3) for k, v in ref.items()},
        }
        rows = [
            ("bake, cold / cached", f"{cold_s:.2f} s / {cached_s:.3f} s", "n/a"),
            (
                "image size (kernel + initrd)",
                f"{m.kernel_size / 2**20:.1f} + {m.initrd_size / 2**20:.1f}"
                f" = {m.size / 2**20:.1f} MB",
                f"{ref['size_mb']:.1f} MB (binary + libs)",
            ),
            (
                f"run to PONG ({accel}, median of {len(ok_runs)})",
                f"{boot_s:.2f} s",
                f"{ref['start_to_pong_s']:.3f} s",
            ),
            ("resident memory", f"{rss:.0f} MB (QEMU)", f"{ref['rss_mb']:.1f} MB"),
            ("smallest memory that serves", f"{floor} MB", "n/a"),
        ]
        print(f"\n{'':38} {'uniklab image':32} native redis-server")
        for name, a, b in rows:
            print(f"{name:38} {a:32} {b}")
        print(f"ratio run-to-PONG uniklab/native: {boot_s / ref['start_to_pong_s']:.0f}x")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
        lab.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
