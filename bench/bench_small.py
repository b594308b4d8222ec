"""Small and fast: Redis images measured in one run, from the generic one (the host's Debian
kernel, an initramfs, Debian's redis-server) to the smallest (uniklab's specialised kernel,
a read-only erofs root, Redis built static from source: the ``redis-static`` recipe).

Prints a table and writes PNG plots and bench/RESULTS.md: bake (cold, cached), image sizes,
run→PONG, QEMU resident memory, the smallest guest memory that serves Redis (searched in
small steps), the generic/smallest ratios, then, for the smallest image, how many Redis
guests run at once on this machine (each must still answer PING) and how long ``ps`` takes
with 100 instances.

    python bench/bench_small.py                 # everything (tens of minutes under TCG)
    python bench/bench_small.py --scale-max 0   # skip the many-instances run

The specialised kernel is built first if this machine lacks it (minutes, once per machine;
reported, not counted in the bake).  For the ``ps`` figure the 100 rows are made directly in
a temporary store with ``Store.reserve`` and marked running, each pointing at a live
``sleep`` whose command line carries the row's runtime directory, so ``ps`` inspects 100
live processes as it would 100 guests, without booting them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from uniklab.backends.hostinfo import choose_accel
from uniklab.bake import recipe, source
from uniklab.errors import UniklabError
from uniklab.kernel import build as kbuild
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths
from uniklab.state.store import RUNNING

HERE = Path(__file__).resolve().parent
MB = 2**20


@dataclass
class Variant:
    label: str
    recipe: str
    kernel: str  # what `uniklab bake --kernel` takes
    root: str | None  # what `uniklab bake --root` takes (None: a rumprun image has none)
    tag: str
    memory_mb: int  # for the boot timings
    floor_range: tuple[int, int]  # (fails, serves) bounds for the floor search
    results: dict[str, float | int | str] = field(default_factory=dict)


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _ping(port: int, timeout: float = 5.0) -> bool:
    try:
        # RESP2: redis-py >= 8 opens with HELLO, which the rumprun image's Redis 3.0.6 refuses.
        client = redis.Redis("127.0.0.1", port, socket_timeout=timeout, protocol=2)
        return bool(client.ping())
    except redis.RedisError:
        return False


def boot(
    lab: Lab, ref: str, memory_mb: int, *, timeout: float = 60, wait: bool = False
) -> tuple[bool, float, int]:
    """Run once and time it until PONG: (answered, seconds, QEMU RSS); destroys it.

    ``wait=False`` (the figure in the table): launch, then PING every few ms with a short
    timeout.  ``wait=True``: what ``uniklab run --wait`` takes, whose probe gives one
    attempt up to 3 s, and an attempt sent before the guest listens waits all of it (QEMU's
    user-mode forward accepts at once), so its figure moves in steps of ~3 s."""
    start = time.monotonic()
    try:
        view = lab.run(
            ref, RunOptions(name="bench", memory=f"{memory_mb}M", timeout=timeout, wait=wait)
        )
        pid = view.row.pid or 0
        answered = wait
        while not answered and time.monotonic() - start < timeout:
            answered = _ping(view.forwards[0][0], timeout=0.25)
            if not answered and not Path(f"/proc/{pid}").exists():
                break
            if not answered:
                time.sleep(0.01)
        took = time.monotonic() - start
        rss = _rss(pid) if answered and pid else 0
    except UniklabError:
        answered, took, rss = False, 0.0, 0
    for v in lab.ps():
        lab.destroy(v.name)
    return answered, took, rss


def throughput(lab: Lab, ref: str, memory_mb: int, requests: int) -> dict[str, float]:
    """redis-benchmark SET and GET (requests/s, 10 clients) through the guest's published
    port: the same user-mode networking for every image."""
    out: dict[str, float] = {}
    try:
        view = lab.run(ref, RunOptions(name="bench-tp", memory=f"{memory_mb}M", timeout=60))
        port = view.forwards[0][0]
        res = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(requests),
             "-c", "10", "-q"],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        for line in res.stdout.replace("\r", "\n").splitlines():
            m = re.match(r"^(SET|GET): ([\d.]+) requests per second", line.strip())
            if m:
                out[f"bench_{m.group(1).lower()}_rps"] = round(float(m.group(2)))
    except (UniklabError, subprocess.SubprocessError) as exc:
        print(f"  throughput of {ref} not measured: {exc}", flush=True)
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
    return out


def memory_floor(lab: Lab, ref: str, lo: int, hi: int, step: int) -> int:
    """Smallest memory (MiB, a multiple of step) at which Redis answers: ``lo`` is assumed
    to fail and ``hi`` to serve (checked); binary search between them."""
    ok, _, _ = boot(lab, ref, hi, timeout=40)
    if not ok:
        raise SystemExit(f"{ref} does not serve with {hi} MiB: widen --floor range")
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        ok, _, _ = boot(lab, ref, mid, timeout=30)
        print(f"  {ref} with {mid} MiB: {'serves' if ok else 'fails'}", flush=True)
        if ok:
            hi = mid
        else:
            lo = mid
    return hi


def measure(v: Variant, boots: int, step: int, requests: int = 0) -> None:
    home = Path(tempfile.mkdtemp(prefix="ukl-bs-", dir="/tmp"))
    lab = Lab(Paths(home))
    try:
        t = time.monotonic()
        m = lab.bake(v.recipe, tag=v.tag, kernel=v.kernel, root=v.root).manifest
        cold = time.monotonic() - t
        t = time.monotonic()
        lab.bake(v.recipe, tag=v.tag, kernel=v.kernel, root=v.root)
        cached = time.monotonic() - t
        ref = f"{v.recipe}:{v.tag}"
        runs = [boot(lab, ref, v.memory_mb) for _ in range(boots)]
        ok = sorted(r[1] for r in runs if r[0])
        rss = max((r[2] for r in runs if r[0]), default=0)
        waited = boot(lab, ref, v.memory_mb, wait=True)
        print(f"{v.label}: run→PONG {ok}", flush=True)
        floor = memory_floor(lab, ref, *v.floor_range, step)
        if requests:
            v.results.update(throughput(lab, ref, v.memory_mb, requests))
        v.results.update(
            bake_cold_s=round(cold, 3),
            bake_cached_s=round(cached, 3),
            kernel_mb=round(m.kernel_size / MB, 2),
            root_mb=round(m.initrd_size / MB, 2),
            image_mb=round(m.size / MB, 2),
            root_files=m.files,
            acpi=str(m.acpi) if not m.is_rumprun else "(pc machine)",
            boots_ok=f"{len(ok)}/{boots}",
            run_to_pong_s=round(ok[len(ok) // 2], 2) if ok else float("nan"),
            run_to_pong_min_s=round(ok[0], 2) if ok else float("nan"),
            run_wait_s=round(waited[1], 2) if waited[0] else float("nan"),
            qemu_rss_mb=round(rss / MB, 1),
            boot_memory_mb=v.memory_mb,
            memory_floor_mb=floor,
        )
    finally:
        for view in lab.ps():
            lab.destroy(view.name)
        lab.close()
        shutil.rmtree(home, ignore_errors=True)


def scale(
    v: Variant, memory_mb: int, limit: int, budget_s: float, reserve_mb: int
) -> dict[str, object]:
    """Start Redis guests one after another until ``limit``, the time budget, or free memory
    (MemAvailable below ``reserve_mb`` plus one guest) stops it; then PING every one."""
    home = Path(tempfile.mkdtemp(prefix="ukl-sc-", dir="/tmp"))
    lab = Lab(Paths(home))
    started: list[tuple[str, int]] = []
    timeline: list[tuple[float, int, float]] = []  # (seconds, guests, host MemAvailable MiB)
    stop = "limit"
    t0 = time.monotonic()
    try:
        lab.bake(v.recipe, tag=v.tag, kernel=v.kernel, root=v.root)
        while len(started) < limit:
            if time.monotonic() - t0 > budget_s:
                stop = "time budget"
                break
            if _mem_available() < (reserve_mb + 2 * memory_mb) * MB:
                stop = "free memory"
                break
            name = f"s{len(started):03d}"
            try:
                view = lab.run(
                    f"{v.recipe}:{v.tag}",
                    RunOptions(name=name, memory=f"{memory_mb}M", timeout=120),
                )
            except UniklabError as exc:
                stop = f"run failed: {exc}"
                break
            started.append((name, view.forwards[0][0]))
            timeline.append((time.monotonic() - t0, len(started), _mem_available() / MB))
            if len(started) % 10 == 0:
                print(f"  {len(started)} guests up after {time.monotonic() - t0:.0f}s", flush=True)
        answering = sum(_ping(port) for _, port in started)
        rss = [
            _rss(v.row.pid) for v in lab.ps() if v.row.pid and Path(f"/proc/{v.row.pid}").exists()
        ]
        return {
            "image": f"{v.recipe}, {v.kernel} kernel, {v.root}",
            "memory_mb": memory_mb,
            "started": len(started),
            "answering": answering,
            "stopped_by": stop,
            "seconds": round(time.monotonic() - t0, 1),
            "qemu_rss_mb_mean": round(sum(rss) / len(rss) / MB, 1) if rss else 0,
            "timeline": timeline,
        }
    finally:
        for view in lab.ps():
            try:
                lab.destroy(view.name)
            except UniklabError as exc:
                print(f"  destroy {view.name}: {exc}", file=sys.stderr)
        lab.close()
        shutil.rmtree(home, ignore_errors=True)


def ps_latency(n: int = 100, repeat: int = 5) -> dict[str, float]:
    from bench_cli import home_with  # the same 100 rows of live processes

    with home_with(n) as home:
        lab = Lab(Paths(home))
        times = []
        for _ in range(repeat):
            t = time.monotonic()
            views = lab.ps()
            times.append(time.monotonic() - t)
            assert sum(v.row.state == RUNNING for v in views) == n, "ps lost rows"
        lab.close()
        cli = []
        env = {**os.environ, "UNIKLAB_HOME": str(home)}
        for _ in range(repeat):
            t = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "uniklab", "ps"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            cli.append(time.monotonic() - t)
        return {
            "instances": n,
            "api_ps_s": round(sorted(times)[repeat // 2], 3),
            "cli_ps_s": round(sorted(cli)[repeat // 2], 3),
        }


ROWS = [
    ("bake, cold (s)", "bake_cold_s"),
    ("bake, cached (s)", "bake_cached_s"),
    ("kernel (MB)", "kernel_mb"),
    ("root: initramfs or erofs (MB)", "root_mb"),
    ("image = kernel + root (MB)", "image_mb"),
    ("ACPI on microvm", "acpi"),
    ("boots that answered", "boots_ok"),
    ("run → PONG, median (s)", "run_to_pong_s"),
    ("run → PONG, best (s)", "run_to_pong_min_s"),
    ("`run --wait` returns (s), one run", "run_wait_s"),
    ("QEMU resident memory (MB)", "qemu_rss_mb"),
    ("  ... at guest memory (MiB)", "boot_memory_mb"),
    ("smallest memory that serves (MiB)", "memory_floor_mb"),
    ("redis-benchmark SET (req/s, 10 clients)", "bench_set_rps"),
    ("redis-benchmark GET (req/s, 10 clients)", "bench_get_rps"),
]


def ratios(generic: Variant, small: Variant) -> list[str]:
    """generic / small for the headline figures, both measured in this run."""
    out = []
    for name, key in (
        ("run → PONG", "run_to_pong_s"),
        ("memory floor", "memory_floor_mb"),
        ("image size", "image_mb"),
        ("QEMU RSS", "qemu_rss_mb"),
        ("SET throughput", "bench_set_rps"),
    ):
        a, b = generic.results.get(key), small.results.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and b:
            out.append(f"ratio {name}: {generic.label} / {small.label} = {a / b:.1f}x")
    return out


def table(variants: list[Variant]) -> str:
    head = f"| {'':36} | " + " | ".join(f"{v.label:>18}" for v in variants) + " |"
    sep = "|" + "-" * 38 + "|" + "|".join("-" * 20 for _ in variants) + "|"
    what = " | ".join(f"{v.recipe + ', ' + (v.root or 'unikernel'):>18}" for v in variants)
    lines = [head, sep, f"| {'recipe, root':36} | {what} |"]
    for name, key in ROWS:
        cells = " | ".join(f"{v.results.get(key, '')!s:>18}" for v in variants)
        lines.append(f"| {name:36} | {cells} |")
    return "\n".join(lines)


def plots(
    variants: list[Variant],
    sc: dict[str, object] | None,
    out: Path,
    name: str = "small_vs_generic",
    title: str = "Redis: generic kernel vs specialised kernel, initramfs vs erofs root, TCG",
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [
        ("run → PONG (s)", "run_to_pong_s"),
        ("memory floor (MiB)", "memory_floor_mb"),
        ("QEMU RSS (MB)", "qemu_rss_mb"),
        ("image size (MB)", "image_mb"),
        ("bake cold (s)", "bake_cold_s"),
        ("bake cached (s)", "bake_cached_s"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    labels = [textwrap.fill(v.label.replace("+", " +"), 12) for v in variants]
    for ax, (panel, key) in zip(axes.flat, panels, strict=True):
        vals = [float(v.results.get(key, 0) or 0) for v in variants]
        bars = ax.bar(labels, vals, color=["#888888", "#2a7ab0", "#3a9a50", "#c08020"][: len(vals)])
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(panel)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    if sc and sc.get("timeline"):
        tl = sc["timeline"]
        assert isinstance(tl, list)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot([t for t, _, _ in tl], [n for _, n, _ in tl], label="guests answering")
        ax.set_xlabel("seconds")
        ax.set_ylabel("Redis guests running")
        ax2 = ax.twinx()
        ax2.plot(
            [t for t, _, _ in tl],
            [m for _, _, m in tl],
            color="#c05030",
            label="host MemAvailable (MiB)",
        )
        ax2.set_ylabel("host MemAvailable (MiB)")
        ax.set_title(f"Redis guests at {sc['memory_mb']} MiB each ({sc['image']}), TCG")
        fig.tight_layout()
        path = out / "scale.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--boots", type=int, default=3, help="boots per variant for run→PONG")
    ap.add_argument("--step", type=int, default=4, help="memory floor search step (MiB)")
    ap.add_argument("--scale-max", type=int, default=100, help="0 skips the scale run")
    ap.add_argument(
        "--scale-memory",
        type=int,
        default=0,
        help="MiB per guest in the scale run (default: floor + 8, at least 32)",
    )
    ap.add_argument("--scale-budget", type=float, default=600, help="seconds")
    ap.add_argument("--reserve", type=int, default=2048, help="MiB of host memory kept free")
    ap.add_argument("--plots", type=Path, default=HERE / "plots")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", help="measure the generic variant and those whose label has this")
    args = ap.parse_args()
    accel, _ = choose_accel(None)

    t = time.monotonic()
    built = kbuild.cached("microvm") is None
    entry = kbuild.build("microvm", progress=lambda msg: print(f"  kernel: {msg}", flush=True))
    kernel_build_s = time.monotonic() - t
    print(
        f"specialised kernel {entry.key}: {'built' if built else 'cached'} in "
        f"{kernel_build_s:.1f}s",
        flush=True,
    )

    t = time.monotonic()
    static = recipe.load("redis-static")[0].build
    assert static is not None
    built_src = not source.build(static).is_file()
    source_s = time.monotonic() - t
    print(f"redis-static built from source in {source_s:.1f}s", flush=True)

    variants = [
        Variant("generic (host)", "redis", "host", "initramfs", "generic", 128, (64, 192)),
        Variant("specialised", "redis", "specialised", "initramfs", "small", 48, (32, 64)),
        Variant("spec. + erofs", "redis", "specialised", "erofs", "erofs", 32, (16, 48)),
        Variant("spec.+erofs+static", "redis-static", "specialised", "erofs", "s", 32, (16, 48)),
    ]
    if args.only:
        variants = [v for v in variants if v.tag == "generic" or args.only in v.label]
    for v in variants:
        print(f"measuring {v.label}...", flush=True)
        measure(v, args.boots, args.step)
    sc = None
    if args.scale_max > 0:
        smallest = variants[-1]
        floor = int(smallest.results["memory_floor_mb"])
        mem = args.scale_memory or max(32, floor + 4)
        print(f"scale: up to {args.scale_max} guests at {mem} MiB...", flush=True)
        sc = scale(smallest, mem, args.scale_max, args.scale_budget, args.reserve)
    print("ps with 100 instances...", flush=True)
    ps = ps_latency()

    text = table(variants)
    extra = [
        f"specialised kernel build (once per machine): "
        f"{f'{kernel_build_s:.0f} s' if built else 'cached'}, key {entry.key}, "
        f"release {entry.release}",
        f"redis-static source build (once per machine, apt-get source + make): "
        f"{f'{source_s:.0f} s' if built_src else 'cached'}",
        "bake cold = a fresh UNIKLAB_HOME, with the machine-wide caches (kernel, source "
        "build, guest init) warm",
    ]
    extra += ratios(variants[0], variants[-1])
    if sc:
        extra.append(
            f"scale: {sc['started']} Redis guests at {sc['memory_mb']} MiB started in "
            f"{sc['seconds']} s (stopped by: {sc['stopped_by']}), {sc['answering']} answered "
            f"PING at the end; mean QEMU RSS {sc['qemu_rss_mb_mean']} MB"
        )
    extra.append(
        f"ps with {ps['instances']} instances: {ps['api_ps_s']} s (API, reconcile included), "
        f"{ps['cli_ps_s']} s (`python -m uniklab ps`, process start included)"
    )
    print()
    print(text)
    for line in extra:
        print(line)
    written = plots(variants, sc, args.plots)
    cmd = shlex.join(["python", "bench/bench_small.py", *sys.argv[1:]])
    cpu = os.cpu_count()
    args.results.write_text(
        "# bench_small: Redis, generic image vs small images\n\n"
        f"Produced by `{cmd}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{cpu} CPUs (shared), accel {accel}.\n\n"
        + text
        + "\n\n"
        + "\n".join(f"- {x}" for x in extra)
        + "\n\n"
        + "\n".join(f"![{p.stem}](plots/{p.name})" for p in written)
        + "\n"
    )
    if args.json:
        doc = {
            "accel": accel,
            "variants": {v.label: v.results for v in variants},
            "scale": sc,
            "ps": ps,
            "kernel_build_s": kernel_build_s,
        }
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
