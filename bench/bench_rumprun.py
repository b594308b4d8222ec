"""The runbook's unikernel beside uniklab's Linux images, measured in one run on the same
machine and the same networking: the rumprun Redis (rumprun-packages' Redis 3.0.6, baked
with the rumprun toolchain for hw_virtio) against the generic Linux image (Debian's kernel
and redis-server, an initramfs) and the smallest one (uniklab's specialised kernel, an
erofs root, Redis 7 built static): image size, bake (cold with the toolchains cached, and
cached), run → PONG under QEMU, the smallest guest memory that serves, QEMU's resident
memory, and redis-benchmark SET/GET through the same user-mode port forward.  The Linux
images' Redis 7.0 as a rumprun unikernel (``rumprun-redis7``) is measured too, so the two
kinds also meet on the same Redis.

    python bench/bench_rumprun.py               # ~15 minutes under TCG
    python bench/bench_rumprun.py --boots 3 --requests 5000

Writes bench/RESULTS-rumprun.md and bench/plots/rumprun_vs_linux.png.  The rumprun
toolchain and the specialised kernel are built first if this machine lacks them (minutes,
once per machine; reported, not counted in the bake).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_small import Variant, measure, plots, ratios, table

from uniklab.backends.hostinfo import choose_accel
from uniklab.kernel import build as kbuild
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths
from uniklab.toolchain import rumprun as rr

HERE = Path(__file__).resolve().parent


XEN_LAB = "benchxen"


def xen_run_to_pong(boots: int) -> dict[str, list[float]]:
    """run → PONG on the virtual Xen host (Xen 4.17 nested in TCG), 64 MB on xenbr0 with
    DHCP, the address found by MAC, probed through the SSH tunnel: the rumprun Redis and
    the Linux image that fits in 64 MB there (specialised Xen kernel, static Redis)."""
    home = Path(tempfile.mkdtemp(prefix="ukl-bx-", dir="/tmp"))
    env = {**os.environ, "UNIKLAB_HOME": str(home)}
    uniklab = [sys.executable, "-m", "uniklab"]
    lab = Lab(Paths(home))
    out: dict[str, list[float]] = {}
    try:
        lab.bake("rumprun-redis")
        lab.bake("redis-static", tag="xen", kernel="specialised:xen", root="initramfs")
        subprocess.run([*uniklab, "lab", "up", "--name", XEN_LAB], env=env, check=True)
        for label, ref in (
            ("rumprun (runbook)", "rumprun-redis:latest"),
            ("smallest Linux, Xen kernel", "redis-static:xen"),
        ):
            out[label] = []
            for i in range(boots):
                t = time.monotonic()
                lab.run(
                    ref,
                    RunOptions(
                        name=f"bx{i}", host=XEN_LAB, net="xenbr0", memory="64M", timeout=300
                    ),
                )
                out[label].append(round(time.monotonic() - t, 2))
                lab.destroy(f"bx{i}")
            print(f"xen: {label}: run→PONG {out[label]}", flush=True)
    finally:
        for view in lab.ps():
            lab.destroy(view.name)
        lab.close()
        subprocess.run([*uniklab, "lab", "down", "--name", XEN_LAB], env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--boots", type=int, default=5, help="boots per image for run→PONG")
    ap.add_argument("--step", type=int, default=4, help="memory floor search step (MiB)")
    ap.add_argument("--requests", type=int, default=10000, help="redis-benchmark -n")
    ap.add_argument("--xen-boots", type=int, default=3, help="boots on the virtual Xen host")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS-rumprun.md")
    ap.add_argument("--plots", type=Path, default=HERE / "plots")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    accel, _ = choose_accel(None)

    prep = []
    for platform in ("hw", "xen"):
        t = time.monotonic()
        tc = rr.build(platform, progress=lambda m: print(f"  toolchain: {m}", flush=True))
        took = f"built now in {time.monotonic() - t:.0f} s" if tc.built_now else "cached"
        prep.append(
            f"rumprun {platform} toolchain ({tc.key}): {took}; its build took "
            f"{tc.meta().get('seconds', '?')} s"
        )
    entry = kbuild.build("microvm", progress=lambda m: print(f"  kernel: {m}", flush=True))
    prep.append(f"specialised kernel {entry.key} (release {entry.release}): cached or built")

    variants = [
        Variant("generic Linux", "redis", "host", "initramfs", "generic", 128, (64, 192)),
        Variant("smallest Linux", "redis-static", "specialised", "erofs", "s", 32, (16, 48)),
        Variant("rumprun Redis 7", "rumprun-redis7", "host", None, "latest", 64, (16, 64)),
        Variant("rumprun (runbook)", "rumprun-redis", "host", None, "latest", 64, (8, 64)),
    ]
    for v in variants:
        print(f"measuring {v.label}...", flush=True)
        measure(v, args.boots, args.step, args.requests)

    xen = xen_run_to_pong(args.xen_boots) if args.xen_boots > 0 else {}
    text = table(variants)
    extra = [
        *prep,
        "bake cold = a fresh UNIKLAB_HOME, with the machine-wide caches (toolchains, kernel, "
        "source build, guest init) warm; the rumprun bake builds Redis twice (hw and xen) "
        "with rumprun-packages' Makefile and runs rumprun-bake for hw_virtio and xen_pv",
        "rumprun's image = its hw_virtio unikernel (debug sections stripped) + data.iso "
        "(redis.conf); the root column is that data disk",
        *(line for other in variants[:-1] for line in ratios(other, variants[-1])),
        *(
            f"Xen (virtual host, nested TCG, 64 MB, DHCP on xenbr0, probed over ssh): "
            f"{label}: run → PONG median {sorted(t)[len(t) // 2]} s of {t}"
            for label, t in xen.items()
        ),
    ]
    print()
    print(text)
    for line in extra:
        print(line)
    if args.json:  # first: a failing plot must not lose the figures
        doc = {"accel": accel, "variants": {v.label: v.results for v in variants}, "xen": xen}
        args.json.write_text(json.dumps(doc, indent=2))
    written = plots(
        variants,
        None,
        args.plots,
        name="rumprun_vs_linux",
        title="Redis: rumprun unikernel vs Linux images, QEMU (TCG), same networking",
    )
    cmd = shlex.join(["python", "bench/bench_rumprun.py", *sys.argv[1:]])
    args.results.write_text(
        "# bench_rumprun: the runbook's rumprun Redis beside uniklab's Linux images\n\n"
        f"Produced by `{cmd}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} CPUs (shared), accel {accel}.\n\n"
        + text
        + "\n\n"
        + "\n".join(f"- {x}" for x in extra)
        + "\n\n"
        + "\n".join(f"![{p.stem}](plots/{p.name})" for p in written)
        + "\n"
    )


if __name__ == "__main__":
    main()
