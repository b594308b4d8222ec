"""The libvirt engine beside the direct QEMU backend, in one run on this machine: the same
Redis image (Debian's kernel, an initramfs) run → PONG through libvirt's QEMU driver (a
``pc`` machine with virtio-pci, as libvirt drives QEMU) and through uniklab's own QEMU
(``microvm``, virtio-mmio), the hypervisor's resident memory, and `uniklab ps` with guests
on both engines.  libvirtd must run (``systemctl start libvirtd``, or ``virtlogd -d;
libvirtd -d``).

    python bench/bench_libvirt.py            # ~3 minutes under TCG
    python bench/bench_libvirt.py --boots 3

Writes bench/RESULTS-libvirt.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from uniklab.backends.hostinfo import choose_accel
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

HERE = Path(__file__).resolve().parent
ENGINES = {"direct QEMU (microvm)": "local", "libvirt QEMU driver (pc)": "lv"}


def run_to_pong(lab: Lab, host: str, boots: int) -> tuple[list[float], list[int]]:
    times, rss = [], []
    for i in range(boots):
        t = time.monotonic()
        view = lab.run("redis", RunOptions(name=f"b{host}{i}", host=host, memory="128M", wait=True))
        times.append(round(time.monotonic() - t, 2))
        insp = lab.backend_of(view.row).inspect(lab.handle(view.row))
        rss.append((insp.rss_bytes or 0) // 2**20)
        lab.destroy(view.name)
    return times, rss


def ps_latency(home: Path, per_engine: int, repeat: int) -> tuple[float, float]:
    """`python -m uniklab ps` wall time with ``per_engine`` guests on each engine, against
    the same listing with the direct QEMU guests only (the libvirt daemon's share)."""
    env = {**os.environ, "UNIKLAB_HOME": str(home)}
    lab = Lab(Paths(home))
    names = {h: [f"p{h}{i}" for i in range(per_engine)] for h in ENGINES.values()}

    def timed() -> float:
        walls = []
        for _ in range(repeat):
            t = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "uniklab", "ps"], env=env, check=True, capture_output=True
            )
            walls.append(time.monotonic() - t)
        return round(statistics.median(walls), 3)

    try:
        for name in names["local"]:
            lab.run("redis", RunOptions(name=name, memory="128M"))
        qemu_only = timed()
        for name in names["lv"]:
            lab.run("redis", RunOptions(name=name, host="lv", memory="128M"))
        both = timed()
    finally:
        for view in lab.ps():
            lab.destroy(view.name)
        lab.close()
    return qemu_only, both


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--ps-guests", type=int, default=5, help="guests per engine for ps")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ukl-bl-", dir="/tmp"))
    lab = Lab(Paths(home))
    rows = []
    try:
        lab.bake("redis")
        lab.hosts.add(name="lv", hypervisor="libvirt", libvirt="qemu:///system")
        results = {}
        for label, host in ENGINES.items():
            results[label] = run_to_pong(lab, host, args.boots)
            print(
                f"{label}: run→PONG {results[label][0]} s, RSS {results[label][1]} MB", flush=True
            )
        lab.close()
        qemu_only, both = ps_latency(home, args.ps_guests, 5)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    direct, virt = (statistics.median(results[k][0]) for k in ENGINES)
    for label, (times, rss) in results.items():
        rows.append(
            f"| {label} | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} "
            f"| {statistics.median(rss):.0f} |"
        )
    accel = choose_accel(None)[0].upper()
    text = "\n".join(
        [
            "# libvirt vs the direct QEMU backend",
            "",
            f"`python bench/bench_libvirt.py --boots {args.boots} --ps-guests "
            f"{args.ps_guests}` on this machine ({os.cpu_count()} cores, {accel}), "
            f"{time.strftime('%Y-%m-%d')}. Same image (`redis`: Debian's kernel, initramfs), "
            "128 MB, user-mode networking with a published port; run → PONG is "
            "`Lab.run(..., wait=True)` until Redis answers PING.",
            "",
            "| engine | run → PONG median (s) | range (s) | hypervisor RSS (MB) |",
            "|---|---|---|---|",
            *rows,
            "",
            f"libvirt / direct: **{virt / direct:.2f}x** run → PONG.",
            "",
            f"`uniklab ps` (median of 5): {qemu_only:.3f} s with {args.ps_guests} direct "
            f"QEMU guests, {both:.3f} s with {args.ps_guests} more on libvirt "
            f"({both / qemu_only:.2f}x: the daemon answers per domain over its socket).",
            "",
        ]
    )
    (HERE / "RESULTS-libvirt.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
