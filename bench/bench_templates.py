"""Benchmark templates and clones against cold boots, in one run.

For each image (``redis-static`` on the specialised kernel with an erofs root, ``redis``
on the host's kernel): run -> PONG for a cold boot and for a clone (medians of --runs, in
one process, so Python's imports are paid before the first), the template's creation
time, and the memory of --clones clones running at once against as many booted guests:
RSS and PSS of each QEMU (/proc/PID/smaps_rollup; PSS splits the template's pages shared
by the clones).  Then scale: how many 32 MB Redis guests start within --scale-budget
seconds (at most --scale-max), clones against cold boots, and how many answer PING at the
end.  Usage: python bench/bench_templates.py [--runs 5] [--clones 4] [--scale-budget 60]
[--scale-max 60] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis

from uniklab import templates
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

IMAGES = {
    # image ref: (bake arguments, memory)
    "redis-static:bench": (
        {"ref": "redis-static", "kernel": "specialised", "root": "erofs"},
        "48M",
    ),
    "redis:bench": ({"ref": "redis", "kernel": "host", "root": None}, "128M"),
}


def _smaps(pid: int) -> dict[str, int]:
    """Rss, Pss… of a process in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return out


def run_to_pong(lab: Lab, ref: str, memory: str, *, clone: bool) -> tuple[float, str]:
    """Seconds from ``run`` to a PONG on the instance's port; the instance's name."""
    start = time.monotonic()
    view = lab.run(ref, RunOptions(memory=memory, clone=clone, wait=False))
    port = view.forwards[0][0]
    while True:
        try:
            if redis.Redis("127.0.0.1", port, socket_timeout=2).ping():
                return time.monotonic() - start, view.name
        except redis.RedisError:
            if time.monotonic() - start > 120:
                raise
            time.sleep(0.005)


def memory_of(lab: Lab, ref: str, memory: str, count: int, *, clone: bool) -> dict[str, float]:
    """Mean RSS and PSS (MB) of ``count`` guests running at once."""
    names = [run_to_pong(lab, ref, memory, clone=clone)[1] for _ in range(count)]
    time.sleep(1.0)  # settled
    rows = [_smaps(int(lab.get(n).row.pid or 0)) for n in names]
    for n in names:
        lab.destroy(n)
    mb = 1 << 20
    return {
        "rss_mb": round(statistics.mean(r["Rss"] for r in rows) / mb, 1),
        "pss_mb": round(statistics.mean(r["Pss"] for r in rows) / mb, 1),
        "private_dirty_mb": round(statistics.mean(r["Private_Dirty"] for r in rows) / mb, 1),
    }


def scale(lab: Lab, ref: str, budget: float, most: int, *, clone: bool) -> dict[str, object]:
    """Guests of ``ref`` at 32 MB started one after another until ``budget`` seconds or
    ``most`` guests; how many answer PING then, their mean PSS, and the host's free memory."""
    names: list[str] = []
    start = time.monotonic()
    while time.monotonic() - start < budget and len(names) < most:
        names.append(run_to_pong(lab, ref, "32M", clone=clone)[1])
    took = time.monotonic() - start
    answered, pss = 0, []
    for n in names:
        view = lab.get(n)
        with contextlib.suppress(redis.RedisError):
            answered += bool(redis.Redis("127.0.0.1", view.forwards[0][0], socket_timeout=5).ping())
        pss.append(_smaps(int(view.row.pid or 0))["Pss"])
    avail = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024
    for n in names:
        lab.destroy(n)
    return {
        "started": len(names),
        "seconds": round(took, 1),
        "answered": answered,
        "mean_pss_mb": round(statistics.mean(pss) / (1 << 20), 1) if pss else 0.0,
        "host_available_gb_at_end": round(avail / (1 << 30), 1),
        "stopped_by": "count" if len(names) >= most else "time budget",
    }


def bench_image(lab: Lab, ref: str, memory: str, runs: int, clones: int) -> dict[str, object]:
    name = ref.split(":")[0]
    # warm: imports, page cache of the image
    lab.destroy(run_to_pong(lab, ref, memory, clone=False)[1])
    cold = []
    for _ in range(runs):
        took, inst = run_to_pong(lab, ref, memory, clone=False)
        cold.append(took)
        lab.destroy(inst)
    start = time.monotonic()
    t, built = templates.create_for(lab, ref, RunOptions(memory=memory, clone=True))
    create = time.monotonic() - start
    assert built, "the bench's home is new: its template is built here"
    warm = []
    for _ in range(runs):
        took, inst = run_to_pong(lab, ref, memory, clone=True)
        warm.append(took)
        lab.destroy(inst)
    return {
        "image": ref,
        "memory": memory,
        "cold_pong_s": round(statistics.median(cold), 3),
        "clone_pong_s": round(statistics.median(warm), 3),
        "speedup": round(statistics.median(cold) / statistics.median(warm), 1),
        "template_create_s": round(create, 2),
        "template_disk_mb": round(t.size_bytes / (1 << 20), 1),
        "booted": memory_of(lab, ref, memory, clones, clone=False),
        "clones": memory_of(lab, ref, memory, clones, clone=True),
        "name": name,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clones", type=int, default=4)
    ap.add_argument("--scale-budget", type=float, default=60.0)
    ap.add_argument("--scale-max", type=int, default=60)
    ap.add_argument("--json")
    args = ap.parse_args()
    scaled: dict[str, dict[str, object]] = {}
    home = Path(tempfile.mkdtemp(prefix="ukb-", dir="/tmp"))
    lab = Lab(Paths(home))
    results = []
    try:
        for ref, (bake, memory) in IMAGES.items():
            lab.bake(str(bake["ref"]), tag="bench", kernel=str(bake["kernel"]), root=bake["root"])
            results.append(bench_image(lab, ref, memory, args.runs, args.clones))
        if args.scale_max > 0:
            small = next(iter(IMAGES))
            for kind, clone in (("cold boots", False), ("clones", True)):
                scaled[kind] = scale(lab, small, args.scale_budget, args.scale_max, clone=clone)
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
        lab.close()
    print(f"{'image':22} {'cold':>7} {'clone':>7} {'x':>5} {'create':>7}", end="")
    print("  booted RSS/PSS  clone RSS/PSS")
    for r in results:
        b, c = r["booted"], r["clones"]
        assert isinstance(b, dict) and isinstance(c, dict)
        print(
            f"{r['image']:22} {r['cold_pong_s']:6.3f}s {r['clone_pong_s']:6.3f}s "
            f"{r['speedup']:5} {r['template_create_s']:6.2f}s  "
            f"{b['rss_mb']:5.1f}/{b['pss_mb']:5.1f} MB  {c['rss_mb']:5.1f}/{c['pss_mb']:5.1f} MB"
        )
    for kind, r in scaled.items():
        print(
            f"scale, {kind} of {next(iter(IMAGES))} at 32 MB: {r['started']} started in "
            f"{r['seconds']} s ({r['stopped_by']}), {r['answered']} answered PING, mean PSS "
            f"{r['mean_pss_mb']} MB, host memory available at the end "
            f"{r['host_available_gb_at_end']} GB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"images": results, "scale": scaled}, indent=2))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
