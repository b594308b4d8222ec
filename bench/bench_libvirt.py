"""The libvirt engine beside the direct QEMU backend, in one run on this machine: the same
Redis image (Debian's kernel, an initramfs) run → PONG through libvirt's QEMU driver (a
``pc`` machine with virtio-pci, as libvirt drives QEMU) and through uniklab's own QEMU
(``microvm``, virtio-mmio), the hypervisor's resident memory, and `uniklab ps` with many
guests spread over both engines (each paused once ready, to spare the CPUs) against `ps`
with none.  libvirtd must run (``systemctl start libvirtd``, or ``virtlogd -d; libvirtd
-d``).

    python bench/bench_libvirt.py            # ~10 minutes under TCG (50 guests for ps)
    python bench/bench_libvirt.py --boots 3 --ps-guests 10

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
from dataclasses import dataclass
from pathlib import Path

from uniklab.backends.hostinfo import choose_accel, meminfo
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

HERE = Path(__file__).resolve().parent
ENGINES = {"direct QEMU (microvm)": "local", "libvirt QEMU driver (pc)": "lv"}
LV_XEN, XL = "libvirt's Xen (libxl) driver", "`xl` over SSH"
XEN_ENGINES = {LV_XEN: "bxen-libvirt", XL: "bxen"}
TITLES = {
    "qemu": "run → PONG: libvirt's QEMU driver against the direct QEMU backend",
    "ps": "`ps` with guests on two engines",
    "xen": "run → PONG on a Xen host: libvirt's Xen driver against `xl`",
}
KEEP_FREE_MB = 4096  # no guest more once this machine has less available (others' work)


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


@dataclass(frozen=True)
class PsLatency:
    empty: float  # median wall of `uniklab ps` with no instance
    full: float  # ... with the guests below, paused
    guests: dict[str, int]  # how many on each host
    note: str = ""  # why fewer guests than asked, if so


def ps_latency(home: Path, guests: int, repeat: int) -> PsLatency:
    """`python -m uniklab ps` wall time (what a user waits for) with ``guests`` instances
    spread evenly over both engines, each paused once ready, against the same listing of
    a home with the same hosts and no instance, the two timed in turn (the machine's other
    work weighs on both alike); fewer guests if this machine would keep less than
    ``KEEP_FREE_MB``."""
    lab = Lab(Paths(home))
    empty_home = Path(tempfile.mkdtemp(prefix="ukl-bl0-", dir="/tmp"))
    empty_lab = Lab(Paths(empty_home))
    empty_lab.hosts.add(name="lv", hypervisor="libvirt", libvirt="qemu:///system")
    empty_lab.close()

    def once(where: Path) -> float:
        env = {**os.environ, "UNIKLAB_HOME": str(where)}
        t = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "uniklab", "ps"], env=env, check=True, capture_output=True
        )
        return time.monotonic() - t

    def timed() -> tuple[float, float]:
        once(home), once(empty_home)  # warm: .pyc files, the page cache
        walls = [(once(empty_home), once(home)) for _ in range(repeat)]
        return (
            round(statistics.median(w[0] for w in walls), 3),
            round(statistics.median(w[1] for w in walls), 3),
        )

    hosts = list(ENGINES.values())
    started = dict.fromkeys(hosts, 0)
    note = ""
    try:
        for i in range(guests):
            free = meminfo().get("MemAvailable", 0) // 1024
            if free < KEEP_FREE_MB:
                note = f"stopped at {i} guests: {free} MB left available on this machine"
                print(note, flush=True)
                break
            host = hosts[i % len(hosts)]
            view = lab.run("redis", RunOptions(name=f"p{i}", host=host, memory="128M"))
            lab.pause(view.name)
            started[host] += 1
            if (i + 1) % 10 == 0:
                print(f"ps: {i + 1} guests running, paused", flush=True)
        empty, full = timed()
    finally:
        for view in lab.ps():
            lab.destroy(view.name)
        lab.close()
        shutil.rmtree(empty_home, ignore_errors=True)
    return PsLatency(empty, full, started, note)


def xen_run_to_pong(home: Path, boots: int) -> dict[str, list[float]]:
    """run → PONG of the same image on the virtual Xen host (`lab up --libvirt`), through
    libvirt's Xen driver and through `xl` over SSH, alternately; each engine's first run
    uploads the image to the host, the later ones find it there."""
    from uniklab.cli.main import main as cli

    env = {"UNIKLAB_HOME": str(home)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    times: dict[str, list[float]] = {label: [] for label in XEN_ENGINES}
    try:
        assert cli(["lab", "up", "--libvirt", "--name", "bxen"]) == 0
        lab = Lab(Paths(home))
        try:
            for i in range(boots):
                for label, host in XEN_ENGINES.items():
                    opts = RunOptions(
                        name=f"x{i}{host}", host=host, net="xenbr0", memory="128M", wait=True
                    )
                    t = time.monotonic()
                    view = lab.run("redis", opts)
                    times[label].append(round(time.monotonic() - t, 2))
                    lab.destroy(view.name)
                    print(f"{label}: run→PONG {times[label][-1]} s", flush=True)
        finally:
            lab.close()
    finally:
        cli(["lab", "down", "--name", "bxen"])
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return times


def qemu_section(results: dict[str, tuple[list[float], list[int]]]) -> list[str]:
    direct, virt = (statistics.median(results[k][0]) for k in ENGINES)
    rows = [
        f"| {label} | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} "
        f"| {statistics.median(rss):.0f} |"
        for label, (times, rss) in results.items()
    ]
    return [
        "Same image (`redis`: Debian's kernel, initramfs), 128 MB, user-mode networking with "
        "a published port; run → PONG is `Lab.run(..., wait=True)` until Redis answers PING.",
        "",
        "| engine | run → PONG median (s) | range (s) | hypervisor RSS (MB) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"libvirt / direct: **{virt / direct:.2f}x** run → PONG.",
    ]


def ps_section(ps: PsLatency) -> list[str]:
    n = sum(ps.guests.values())
    return [
        "`uniklab ps` as a user runs it (`python -m uniklab ps`, median of 5 runs), with "
        f"{n} guests ("
        + ", ".join(f"{k} on {h}" for h, k in ps.guests.items())
        + ", 128 MB each, paused once ready) against a home with the same hosts and no "
        "instance, the two timed in turn:",
        "",
        "| instances | ps wall (s) | / ps with none |",
        "|---|---|---|",
        f"| 0 | {ps.empty:.3f} | 1.00 |",
        f"| {n} | {ps.full:.3f} | {ps.full / ps.empty:.2f} |",
        *(["", f"({ps.note}.)"] if ps.note else []),
    ]


def xen_section(times: dict[str, list[float]]) -> list[str]:
    rows = [
        f"| {label} | {t[0]:.2f} | "
        + (f"{statistics.median(t[1:]):.2f} ({len(t) - 1} runs)" if len(t) > 1 else "-")
        + " |"
        for label, t in times.items()
    ]
    lv_first, xl_first = (times[k][0] for k in XEN_ENGINES)
    return [
        "The virtual Xen host (`uniklab lab up --libvirt`: Xen 4.17 in QEMU under TCG, "
        "libvirtd in its dom0); the same image as a PV guest on `xenbr0`, 128 MB, run → PONG "
        "through an SSH tunnel to the dom0; the engines alternate.",
        "",
        "| engine | first run → PONG, image uploaded (s) | later runs, median (s) |",
        "|---|---|---|",
        *rows,
        "",
        f"libvirt's Xen driver / `xl`: **{lv_first / xl_first:.2f}x** on the first run"
        + (
            f", **{statistics.median(times[LV_XEN][1:]) / statistics.median(times[XL][1:]):.2f}x**"
            " later."
            if len(times[XL]) > 1
            else "."
        ),
    ]


def write(sections: dict[str, list[str]]) -> str:
    """RESULTS-libvirt.md with ``sections`` (title: lines) replacing those of the same
    title; the others stay as an earlier run measured them."""
    path = HERE / "RESULTS-libvirt.md"
    kept: dict[str, list[str]] = {}
    if path.exists():
        title = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                title = line[3:]
                kept[title] = []
            elif title is not None:
                kept[title].append(line)
    for title, lines in sections.items():
        kept[title] = ["", *lines, ""]
    order = [t for t in TITLES.values() if t in kept]
    text = "# The libvirt engine against uniklab's direct engines\n"
    text += "".join(f"\n## {t}\n\n" + "\n".join(kept[t]).strip("\n") + "\n" for t in order)
    path.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--ps-guests", type=int, default=50, help="guests for ps, over both engines")
    ap.add_argument("--xen-boots", type=int, default=3, help="runs per engine on Xen")
    ap.add_argument(
        "--parts", default="qemu,ps,xen", help="what to measure, of: " + ",".join(TITLES)
    )
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    if not parts or set(parts) - TITLES.keys():
        ap.error(f"--parts: some of {','.join(TITLES)}")
    home = Path(tempfile.mkdtemp(prefix="ukl-bl-", dir="/tmp"))
    lab = Lab(Paths(home))
    accel = choose_accel(None)[0].upper()
    said = (
        f"`{' '.join(['python bench/bench_libvirt.py', *sys.argv[1:]])}`"
        + f", one run on this machine ({os.cpu_count()} cores, {accel}), "
        + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + ", other work sharing the CPUs."
    )
    try:
        lab.bake("redis")
        lab.hosts.add(name="lv", hypervisor="libvirt", libvirt="qemu:///system")
        lab.close()
        if "qemu" in parts:
            lab = Lab(Paths(home))
            results = {}
            for label, host in ENGINES.items():
                results[label] = run_to_pong(lab, host, args.boots)
                print(f"{label}: run→PONG {results[label][0]} s, RSS {results[label][1]} MB")
            lab.close()
            print(write({TITLES["qemu"]: [said, "", *qemu_section(results)]}))
        if "ps" in parts:
            ps = ps_latency(home, args.ps_guests, 5)
            print(write({TITLES["ps"]: [said, "", *ps_section(ps)]}))
        if "xen" in parts:
            xen = xen_run_to_pong(home, args.xen_boots)
            print(write({TITLES["xen"]: [said, "", *xen_section(xen)]}))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
