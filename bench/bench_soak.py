"""Soak and load: run/destroy cycles, then check that nothing grew; ps racing runs.

1. ``--cycles`` run→PONG→destroy cycles (default 200), ``--concurrency`` at once, through
   long-lived API clients (one per worker thread); as root, half of them on a bridged
   network (``net create`` inside a network namespace this script creates and removes,
   DHCP from uniklab's dnsmasq), the rest on user-mode networking.  Before and after:
   this process's descriptors, taps, bridges, leases, dnsmasq/socat/QEMU processes naming
   the home, runtime directories, rows, disk use of the home.  Prints cycles/minute and
   the leak table.
2. ``--race-ps`` ``python -m uniklab ps --json`` (``--race-pool`` at a time) and in-process
   ``ps`` in threads while ``--race-runs`` runs and destroys race: no "database is
   locked", no lost row, nothing left.

Exits non-zero if anything grew, a cycle failed or the race found a fault.  The image is
Redis with the specialised kernel if this machine has built it (``uniklab kernel ls``),
else with the host's kernel: the output says which.

    python bench/bench_soak.py                         # 200 cycles + the race
    python bench/bench_soak.py --cycles 10 --race-ps 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The repository root, for the snapshot code in tests/support/soak.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import soak

from uniklab.errors import UniklabError
from uniklab.kernel import build as kbuild
from uniklab.lab import Lab
from uniklab.net import netns
from uniklab.net.service import NetworkSpec
from uniklab.paths import Paths

NS = f"uklsoak{os.getpid() % 10000}"
NETWORK = "soak"
SUBNET = "10.89.0.0/24"


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f}s" if xs else "-"


def run_soak(home: Path, image: str, args: argparse.Namespace, bridged: bool) -> soak.SoakResult:
    share = args.cycles // 2 if bridged else 0
    plan = soak.interleave(args.cycles - share, share)
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 30 or done == total:
            last[0] = time.monotonic()
            print(f"  {done}/{total} cycles", flush=True)

    return soak.soak(
        home,
        image,
        plan,
        concurrency=args.concurrency,
        network=NETWORK if bridged else None,
        netns=NS if bridged else None,
        progress=progress,
    )


def report_soak(r: soak.SoakResult) -> list[str]:
    modes = ", ".join(f"{len(d)} {m}" for m, d in r.durations.items())
    lines = [
        f"{r.cycles} cycles ({modes} completed) in {r.seconds:.0f}s: "
        f"{r.per_minute:.1f} cycles/minute",
    ]
    for mode, d in r.durations.items():
        lines.append(
            f"  {mode}: run -> PONG -> destroyed, median {_median(d)}, max {max(d):.1f}s"
            if d
            else f"  {mode}: none completed"
        )
    lines.append(f"failed cycles: {len(r.failures)}")
    lines += [f"  {f.splitlines()[0]}" for f in r.failures[:10]]
    return lines


def teardown(lab: Lab, home: Path) -> list[str]:
    """Destroy what the store lists, remove the network; then whatever is still there
    (the store may be damaged: it is reported, and the rest removed by hand)."""
    faults = []
    try:
        rows, nets = lab.store.instances(), lab.store.networks()
    except UniklabError as exc:
        faults.append(f"teardown: {exc}")
        rows, nets = [], []
    for row in rows:
        try:
            lab.destroy(row.name)
        except UniklabError as exc:
            faults.append(f"teardown: destroy {row.name}: {exc}")
    for net in nets:
        try:
            lab.networks.rm(net.name, [])
        except UniklabError as exc:
            faults.append(f"teardown: net rm {net.name}: {exc}")
    lab.close()
    snap = soak.snapshot(home) if not faults else None
    left = [
        f"{k}: {dict(snap.resources[k])}"
        for k in ("processes", "rows", "taps", "bridges")
        if snap and snap.resources[k]
    ]
    left += [f"runtime directory {d}" for d in (home / "run").glob("*")]
    for pid, program in soak.naming(home):
        left.append(f"{program} {pid} (killed)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if netns.exists(NS):
        left.append(f"namespace {NS} (removed)")
        netns.remove(NS)
    return faults + [f"left after teardown: {x}" for x in left]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--cycles", type=int, default=200, help="run/destroy cycles in all")
    ap.add_argument("--concurrency", type=int, default=3, help="cycles at once")
    ap.add_argument("--user-only", action="store_true", help="no bridged cycles (as root too)")
    ap.add_argument("--race-runs", type=int, default=10)
    ap.add_argument("--race-ps", type=int, default=100, help="0 skips the race")
    ap.add_argument("--race-pool", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bridged = os.geteuid() == 0 and not args.user_only
    home = Path(tempfile.mkdtemp(prefix="ukl-soak-", dir="/tmp"))
    kernel = "specialised" if kbuild.cached("microvm") else "host"
    lab = Lab(Paths(home))
    faults: list[str] = []
    doc: dict[str, object] = {"kernel": kernel, "concurrency": args.concurrency}
    try:
        t = time.monotonic()
        lab.bake("redis", tag="soak", kernel=kernel)
        image = "redis:soak"
        print(
            f"image {image}: Redis, {kernel} kernel (baked in {time.monotonic() - t:.1f}s)"
            + ("" if kernel == "specialised" else "; `uniklab kernel build` for the small one")
        )
        if bridged:
            lab.networks.create(NetworkSpec(NETWORK, SUBNET, None, NS))
            print(f"bridged: network {NETWORK} ({SUBNET}, DHCP) in namespace {NS}")
        else:
            print("user-mode networking only" + ("" if args.user_only else " (not root)"))

        print(f"soak: {args.cycles} cycles, {args.concurrency} at once...", flush=True)
        r = run_soak(home, image, args, bridged)
        print()
        for line in report_soak(r):
            print(line)
        print()
        print(soak.leak_table(r.growth))
        print("(cyclic GC off during the cycles: a descriptor only it would close is a leak)")
        faults += [f"leak: {g.resource}: {', '.join(g.grown)}" for g in r.leaked]
        faults += [f"cycle failed: {f.splitlines()[0]}" for f in r.failures]
        doc["soak"] = {
            "cycles": r.cycles,
            "seconds": round(r.seconds, 1),
            "cycles_per_minute": round(r.per_minute, 2),
            "median_cycle_s": {
                m: round(statistics.median(d), 2) for m, d in r.durations.items() if d
            },
            "failures": r.failures,
            "growth": [
                {"resource": g.resource, "before": g.before, "after": g.after, "new": g.grown}
                for g in r.growth
            ],
        }

        if args.race_ps > 0:
            print(
                f"\nrace: {args.race_ps} CLI ps ({args.race_pool} at a time) and in-process ps "
                f"while {args.race_runs} runs and destroys race...",
                flush=True,
            )
            race = soak.race(
                home, image, runs=args.race_runs, ps_cli=args.race_ps, ps_pool=args.race_pool
            )
            for line in soak.race_figures(race):
                print(line)
            faults += [f"race: {x}" for x in race.locked + race.lost + race.failed]
            doc["race"] = {
                "figures": soak.race_figures(race),
                "locked": race.locked,
                "lost": race.lost,
                "failed": race.failed,
            }
    finally:
        faults += teardown(lab, home)
        shutil.rmtree(home, ignore_errors=True)
    print()
    print("nothing grew, nothing failed" if not faults else f"{len(faults)} fault(s):")
    for f in faults[:20]:
        print(f"  {f.splitlines()[0][:300]}")
    if len(faults) > 20:
        print(f"  ... {len(faults) - 20} more" + (f" (in {args.json})" if args.json else ""))
    doc["faults"] = faults
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
