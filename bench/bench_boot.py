"""Where a boot goes, phase by phase: the smallest Linux image (``redis-static``: uniklab's
specialised kernel, an erofs root, static musl Redis) against the rumprun image
(``rumprun-redis``: Redis 3.0.6 on rumprun's hw platform), from ``run`` to Redis's PONG.

    python bench/bench_boot.py                   # 5 boots of each, 3 traced kernel boots
    python bench/bench_boot.py --boots 9 --kernel-boots 0 --json /tmp/boot.json
    python bench/bench_boot.py --home /tmp/ukl-bb-x     # reuse a home: no rumprun re-bake

How it measures (host wall clock throughout):

* QEMU runs through a wrapper (a shell script put first on PATH for this process only)
  that records when it was exec'd and adds ``-msg timestamp=on -D <file> -trace ...``:
  QEMU then logs every byte the guest writes to the serial port, every fw_cfg selection
  (the firmware loading the kernel) and the VM starting, each with the host time.  Console
  lines are stamped with the host time of their first byte.  Nothing else in the command
  line changes for the measured boots.
* A poller starts a PING attempt every 5 ms (up to 2 in flight: QEMU's user-mode forward
  accepts before the guest listens, so an attempt can hang); the first PONG is "answered".
  Probing this often costs the booting guest ~40 ms of CPU (a SYN and a RST per attempt
  once its NIC is up) and the wrapper's trace a little more: the traced totals run
  ~0.1-0.25 s above the untraced ``boot()`` figure printed with them, which is the one to
  quote; the traced boots say where the time goes.
* The kernel's own phases (decompression, early setup, initcalls, root mount, freeing the
  init memory) need its messages: ``--kernel-boots`` more Linux boots with ``quiet``
  dropped and ``printk.time=1`` added.  Printing slows these boots, so their phases are
  reported separately and the table's totals come from the quiet boots only.  The guest
  printk clock is mapped to the host's by the smallest host-minus-guest offset over the
  lines printed live (under TCG the guest TSC is the host's).
* Host-side overhead, per round: ``Lab.run`` until QEMU is running, the same boot timed
  as bench_small.py times it (``boot``: a PING with a 0.25 s timeout every 10 ms), and
  the CLI ``uniklab run --wait`` (interpreter start, then the image's own probe: one
  attempt of >= 0.2 s every 0.1 s).

Boots of the two images alternate, so a busy host slows both alike; medians and ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_small import Variant, boot  # bench/ is on sys.path: run as python bench/bench_boot.py

from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

WRAPPER = r"""#!/bin/bash
# bench_boot.py's QEMU wrapper: host-stamped trace; BENCH_BOOT_VERBOSE=1 makes a Linux
# kernel print its boot (quiet dropped, printk.time=1).
t0=$EPOCHREALTIME
args=("$@"); pf=""; prev=""
for i in "${!args[@]}"; do
  a=${args[$i]}
  [ "$prev" = "-pidfile" ] && pf=$a
  if [ "$prev" = "-append" ] && [ "${BENCH_BOOT_VERBOSE:-0}" = 1 ]; then
    case "$a" in *uniklab.config=*) args[$i]="${a/ quiet / } printk.time=1";; esac
  fi
  prev=$a
done
extra=()
if [ -n "$pf" ] && [ -n "$BENCH_BOOT_TRACES" ]; then
  f="$BENCH_BOOT_TRACES/$(basename "$(dirname "$pf")")"
  echo "$t0" > "$f.start"
  extra=(-msg timestamp=on -D "$f.log")
  for e in serial_write fw_cfg_select vm_state_notify; do extra+=(-trace "enable=$e"); done
fi
exec "$BENCH_BOOT_QEMU" "${extra[@]}" "${args[@]}"
"""

LINUX = Variant("smallest Linux", "redis-static", "specialised", "erofs", "s", 32, (16, 48))
RUMP = Variant("rumprun", "rumprun-redis", "host", None, "latest", 64, (8, 64))


# ------------------------------------------------------------------ one traced boot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll_pong(port: int, out: dict[str, Any], stop: threading.Event, every: float = 0.005) -> None:
    """A new PING attempt every ``every`` s while fewer than 2 are in flight (one may hang:
    QEMU's forward accepts before the guest's NIC is up), each given 1 s.  More in flight
    would flood the booting guest with SYNs (measured: +50 ms with 16)."""
    sel = selectors.DefaultSelector()
    inflight: dict[socket.socket, float] = {}
    nxt = time.time()
    while not stop.is_set():
        now = time.time()
        if now >= nxt and len(inflight) < 2:
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
                inflight[s] = now
                sel.register(s, selectors.EVENT_WRITE, "connect")
            except BlockingIOError:
                inflight[s] = now
                sel.register(s, selectors.EVENT_WRITE, "connect")
            except OSError:
                s.close()
            nxt = now + every
        for key, _ in sel.select(timeout=max(0.0, min(0.002, nxt - time.time()))):
            s = key.fileobj  # type: ignore[assignment]
            assert isinstance(s, socket.socket)
            try:
                if key.data == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err)
                    s.send(b"PING\r\n")
                    sel.modify(s, selectors.EVENT_READ, "read")
                    continue
                if s.recv(64).startswith(b"+PONG"):
                    out["pong"] = time.time()
                    out["cpu"] = _qemu_cpu(out.get("pid"))
                    stop.set()
                raise OSError("done")
            except OSError:
                sel.unregister(s)
                s.close()
                inflight.pop(s, None)
        for s, t in list(inflight.items()):
            if time.time() - t > 1.0:
                sel.unregister(s)
                s.close()
                inflight.pop(s)
    for s in inflight:
        s.close()


def _qemu_cpu(pid: int | None) -> float | None:
    """CPU seconds all of QEMU's threads have run so far (schedstat): under a busy host the
    wall clock includes waiting for a core; this does not."""
    if not pid:
        return None
    try:
        return sum(int((t / "schedstat").read_text().split()[0])
                   for t in Path(f"/proc/{pid}/task").iterdir()) / 1e9  # fmt: skip
    except OSError:
        return None


def _parse_trace(path: Path) -> dict[str, Any]:
    """Console lines (host time of their first byte), fw_cfg selections, VM start."""
    ev: dict[str, Any] = {"fw_cfg": [], "lines": [], "first_serial": None}
    rx = re.compile(r"^\d+@(\d+\.\d+):(\w+) (.*)$")
    lcr, cur, cur_t = 0, bytearray(), None
    for raw in path.read_text(errors="replace").splitlines():
        m = rx.match(raw)
        if not m:
            continue
        t, name, rest = float(m.group(1)), m.group(2), m.group(3)
        if name == "serial_write":
            ev["first_serial"] = ev["first_serial"] or t
            w = re.match(r"write addr 0x(\w+) val 0x(\w+)", rest)
            if not w:
                continue
            addr, val = int(w.group(1), 16), int(w.group(2), 16)
            if addr == 3:
                lcr = val
            elif addr == 0 and not lcr & 0x80:  # THR, not the divisor latch
                cur_t = cur_t or t
                if val == 10:
                    ev["lines"].append((cur_t, cur.decode(errors="replace").rstrip("\r")))
                    cur, cur_t = bytearray(), None
                else:
                    cur.append(val)
        elif name == "fw_cfg_select":
            ev["fw_cfg"].append(t)
        elif name == "vm_state_notify" and "running 1" in rest:
            ev["vm_running"] = t
    if cur:
        ev["lines"].append((cur_t, cur.decode(errors="replace")))
    return ev


KTS = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")

# Console milestones: (key, pattern); the host time of the first line that matches.
MILESTONES = [
    ("init_start", r"uniklab-init: start"),
    ("init_net", r"uniklab-init: net "),
    ("init_clock", r"uniklab-init: clock set"),
    ("init_exec", r"uniklab-init: ready-to-exec"),
    ("app_start", r"Redis is starting|calling \"redis-server\" main"),
    ("rump_first", r"rump kernel bare metal bootstrap"),
    ("rump_netbsd", r"^NetBSD "),
    ("rump_pci", r"^pci0 at mainbus"),
    ("rump_tmpfs", r"mounted tmpfs"),
    ("app_ready", r"[Rr]eady to accept"),
]

# Kernel messages (traced boots): (key, pattern) on the printk text, guest time.
KMARKS = [
    ("console_on", r"printk: console \[ttyS0\] enabled"),
    ("timer_check", r"\.\.TIMER: vector"),
    ("tsc_early", r"clocksource: tsc-early"),
    ("xstate", r"x86/fpu: Enabled xstate"),
    ("alternatives", r"Freeing SMP alternatives"),
    ("smp_done", r"smpboot: Total of"),
    ("devtmpfs_init", r"devtmpfs: initialized"),
    ("blk_probe", r"virtio_blk virtio\d+: \[vda\]"),
    ("root_mounted", r"VFS: Mounted root"),
    ("devtmpfs_mounted", r"devtmpfs: mounted"),
    ("initmem_freed", r"Freeing unused kernel image \(initmem\)"),
    ("run_init", r"Run /init as init process"),
]


def traced_boot(lab: Lab, v: Variant, traces: Path) -> dict[str, Any]:
    """One boot: host times (s from the ``run`` call) of QEMU's and the guest's milestones."""
    port, stop = _free_port(), threading.Event()
    out: dict[str, Any] = {}
    poller = threading.Thread(target=_poll_pong, args=(port, out, stop), daemon=True)
    t_call = time.time()
    poller.start()
    view = lab.run(
        f"{v.recipe}:{v.tag}",
        RunOptions(name="bootbench", memory=f"{v.memory_mb}M", publish=[(port, 6379)],
                   wait=False),
    )  # fmt: skip
    t_ret = time.time()
    out["pid"] = view.row.pid
    rid = Path(view.row.runtime["rundir"]).name
    poller.join(30)
    stop.set()
    time.sleep(0.2)  # the last console lines
    for iv in lab.ps():
        lab.destroy(iv.name)
    ev = _parse_trace(traces / f"{rid}.log")
    r: dict[str, Any] = {
        "qemu_exec": float((traces / f"{rid}.start").read_text()) - t_call,
        "run_returned": t_ret - t_call,
    }
    if "vm_running" in ev:
        r["vm_running"] = ev["vm_running"] - t_call
        # The firmware's last fw_cfg selection before the kernel runs: the kernel is loaded.
        fw = [t for t in ev["fw_cfg"] if t > ev["vm_running"]]
        if fw:
            r["kernel_loaded"] = fw[-1] - t_call
    if ev["first_serial"]:
        r["first_serial"] = ev["first_serial"] - t_call
    lines = ev["lines"]
    for key, pat in MILESTONES:
        hit = next((t for t, s in lines if re.search(pat, s)), None)
        if hit is not None:
            r[key] = hit - t_call
    if "pong" in out:
        r["pong"] = out["pong"] - t_call
        if out.get("cpu"):
            r["qemu_cpu_to_pong"] = out["cpu"]
    # The guest kernel's printk clock on the host's: guest t=0 at the smallest offset.
    stamped = [(t, float(m.group(1)), m.group(2)) for t, s in lines if (m := KTS.match(s))]
    live = [t - g for t, g, _ in stamped if g > 0]
    if live:
        t0 = min(live)
        r["kernel_t0"] = t0 - t_call
        for key, pat in KMARKS:
            hit = next((g for _, g, s in stamped if re.search(pat, s)), None)
            if hit is not None:
                r["k_" + key] = t0 + hit - t_call
    return r


# ------------------------------------------------------------------ host-side figures


def cli_run_wait(home: Path, ref: str, memory_mb: int) -> float:
    """Wall time of ``uniklab run --wait`` (a new interpreter, then the image's probe)."""
    env = {**os.environ, "UNIKLAB_HOME": str(home)}
    cli = [sys.executable, "-m", "uniklab"]
    t = time.monotonic()
    subprocess.run([*cli, "run", ref, "--name", "bootcli", "-m", f"{memory_mb}M", "--wait",
                    "--timeout", "60"], env=env, check=True, capture_output=True)  # fmt: skip
    took = time.monotonic() - t
    subprocess.run([*cli, "destroy", "bootcli"], env=env, check=True, capture_output=True)
    return took


# ------------------------------------------------------------------ the tables


def _d(r: dict[str, Any], a: str, b: str) -> float | None:
    return float(r[b] - r[a]) if a in r and b in r else None


LINUX_PHASES = [
    ("uniklab: run call → QEMU exec", "call", "qemu_exec"),
    ("QEMU init → VM running", "qemu_exec", "vm_running"),
    ("firmware: qboot loads bzImage (fw_cfg)", "vm_running", "kernel_loaded"),
    ("decompress + kernel start → console up", "kernel_loaded", "first_serial"),
    ("kernel init → /init (initcalls, root, free)", "first_serial", "init_start"),
    ("init: config, lo, eth0 static", "init_start", "init_net"),
    ("init: clock from host time service", "init_net", "init_clock"),
    ("exec → Redis's first line", "init_exec", "app_start"),
    ("Redis: first line → ready", "app_start", "app_ready"),
    ("ready → PONG seen on host (5 ms poll)", "app_ready", "pong"),
    ("TOTAL run → PONG", "call", "pong"),
]
RUMP_PHASES = [
    ("uniklab: run call → QEMU exec", "call", "qemu_exec"),
    ("QEMU init → VM running", "qemu_exec", "vm_running"),
    ("firmware: SeaBIOS + multiboot load", "vm_running", "kernel_loaded"),
    ("bmk bootstrap → first line", "kernel_loaded", "rump_first"),
    ("bmk: TSC calibration … NetBSD banner", "rump_first", "rump_netbsd"),
    ("rump kernel init → pci0", "rump_netbsd", "rump_pci"),
    ("virtio net+blk attach, mounts", "rump_pci", "rump_tmpfs"),
    ("config (net static) → main()", "rump_tmpfs", "app_start"),
    ("Redis: main() → ready", "app_start", "app_ready"),
    ("ready → PONG seen on host (5 ms poll)", "app_ready", "pong"),
    ("TOTAL run → PONG", "call", "pong"),
]
KERNEL_PHASES = [
    ("bzImage setup + LZ4 decompress + head", "kernel_loaded", "kernel_t0"),
    ("early setup_arch/mm → console on", "kernel_t0", "k_console_on"),
    ("→ IO-APIC timer check done", "k_console_on", "k_tsc_early"),
    ("CPU init, alternatives patching", "k_tsc_early", "k_alternatives"),
    ("sched/RCU/SMP bring-up", "k_alternatives", "k_devtmpfs_init"),
    ("initcalls (drivers, net, virtio)", "k_devtmpfs_init", "k_root_mounted"),
    ("  of which: up to virtio-blk's [vda] line", "k_devtmpfs_init", "k_blk_probe"),
    ("free_initmem (poison init text, TCG SMC)", "k_devtmpfs_mounted", "k_initmem_freed"),
    ("mark rodata ro → Run /init", "k_initmem_freed", "k_run_init"),
    ("/init exec + early mounts → 'start'", "k_run_init", "init_start"),
]


Phases = list[tuple[str, str, str]]
Row = tuple[str, float | None, float, float, int]


def _with_call(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "call": 0.0}


def phase_rows(runs: list[dict[str, Any]], phases: Phases) -> list[Row]:
    rows: list[Row] = []
    for label, a, b in phases:
        vals = sorted(x for r in runs if (x := _d(_with_call(r), a, b)) is not None)
        if vals:
            rows.append((label, statistics.median(vals), vals[0], vals[-1], len(vals)))
        else:
            rows.append((label, None, 0.0, 0.0, 0))
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"  {'phase':46s} {'median ms':>9s} {'min':>7s} {'max':>7s}  n")
    for label, med, lo, hi, n in rows:
        if med is None:
            print(f"  {label:46s} {'-':>9s}")
        else:
            print(f"  {label:46s} {med * 1000:9.0f} {lo * 1000:7.0f} {hi * 1000:7.0f}  {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boots", type=int, default=5, help="quiet boots of each image")
    ap.add_argument("--kernel-boots", type=int, default=3, help="Linux boots with printk on")
    ap.add_argument(
        "--host-rounds",
        type=int,
        default=3,
        help="rounds (of --boots) that also time `uniklab run --wait`",
    )
    ap.add_argument("--json", type=Path, help="write every boot's figures here")
    ap.add_argument(
        "--home",
        type=Path,
        help="a UNIKLAB_HOME to reuse (images re-baked only if stale; default: a fresh one)",
    )
    args = ap.parse_args()

    real = subprocess.run(["bash", "-c", "command -v qemu-system-x86_64"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    home = args.home or Path(tempfile.mkdtemp(prefix="ukl-bb-", dir="/tmp"))
    bindir, traces = home / "bench-boot-bin", home / "bench-boot-traces"
    bindir.mkdir(parents=True, exist_ok=True)
    traces.mkdir(exist_ok=True)
    (bindir / "qemu-system-x86_64").write_text(WRAPPER)
    (bindir / "qemu-system-x86_64").chmod(0o755)
    plain_path, traced_path = os.environ["PATH"], f"{bindir}:{os.environ['PATH']}"
    os.environ.update(
        PATH=traced_path, BENCH_BOOT_QEMU=real,
        BENCH_BOOT_TRACES=str(traces), UNIKLAB_HOME=str(home),
    )  # fmt: skip
    lab = Lab(Paths(home))
    for v in (LINUX, RUMP):
        t = time.monotonic()
        lab.bake(v.recipe, tag=v.tag, kernel=v.kernel, root=v.root)
        print(f"baked {v.recipe}:{v.tag} in {time.monotonic() - t:.1f} s", flush=True)

    # The first run in a fresh UNIKLAB_HOME decides KVM or TCG (a probe QEMU, cached in the
    # home per host boot; ~10 s where /dev/kvm exists but KVM hangs): timed apart.
    os.environ["PATH"] = plain_path
    ok, first_run, _ = boot(lab, f"{LINUX.recipe}:{LINUX.tag}", LINUX.memory_mb, timeout=90)
    os.environ["PATH"] = traced_path
    print(f"first run in this UNIKLAB_HOME → PONG: {first_run:.3f} s", flush=True)

    res: dict[str, list[dict[str, Any]]] = {"linux": [], "rump": [], "kernel": [], "host": []}
    for i in range(args.boots):
        # One round: a traced boot of each image, then each timed as bench_small.py times
        # it (no wrapper, no trace, no 5 ms poller), then (first rounds) the CLI.
        for key, v in (("linux", LINUX), ("rump", RUMP)):
            r = traced_boot(lab, v, traces)
            res[key].append(r)
            print(
                f"  {v.label:15s} boot {i + 1}: PONG at {r.get('pong', float('nan')):.3f} s, "
                f"QEMU CPU {r.get('qemu_cpu_to_pong', float('nan')):.3f} s",
                flush=True,
            )
        for v in (LINUX, RUMP):
            os.environ["PATH"] = plain_path
            try:
                ok, took, _ = boot(lab, f"{v.recipe}:{v.tag}", v.memory_mb, timeout=60)
                cli = None
                if i < args.host_rounds:
                    cli = cli_run_wait(home, f"{v.recipe}:{v.tag}", v.memory_mb)
            finally:
                os.environ["PATH"] = traced_path
            res["host"].append({"image": v.label, "bench_small_boot": took if ok else None,
                                "cli_run_wait": cli})  # fmt: skip
    os.environ["BENCH_BOOT_VERBOSE"] = "1"
    for i in range(args.kernel_boots):
        r = traced_boot(lab, LINUX, traces)
        res["kernel"].append(r)
        print(f"  traced kernel boot {i + 1}: PONG at {r.get('pong', float('nan')):.3f} s",
              flush=True)  # fmt: skip
    os.environ.pop("BENCH_BOOT_VERBOSE")

    print_table(f"{LINUX.label} ({LINUX.recipe}, {LINUX.memory_mb} MiB): quiet boots",
                phase_rows(res["linux"], LINUX_PHASES))  # fmt: skip
    print_table(f"{RUMP.label} ({RUMP.recipe}, {RUMP.memory_mb} MiB)",
                phase_rows(res["rump"], RUMP_PHASES))  # fmt: skip
    if res["kernel"]:
        print_table("Linux kernel phases (boots with printk on: slower; not in the totals)",
                    phase_rows(res["kernel"], KERNEL_PHASES))  # fmt: skip
    print("\nhost side and robust figures (s, median [min-max] n)")

    def line(image: str, label: str, given: list[float | None]) -> None:
        vals = sorted(x for x in given if x is not None)
        if vals:
            print(f"  {image:15s} {label:54s} {statistics.median(vals):.3f} "
                  f"[{vals[0]:.3f}-{vals[-1]:.3f}] {len(vals)}")  # fmt: skip

    for v, key in ((LINUX, "linux"), (RUMP, "rump")):
        rows = [h for h in res["host"] if h["image"] == v.label]
        line(v.label, "QEMU CPU time until PONG (traced boots)",
             [r.get("qemu_cpu_to_pong") for r in res[key]])  # fmt: skip
        line(v.label, "run → PONG, traced boot (wrapper, 5 ms poller)",
             [r.get("pong") for r in res[key]])  # fmt: skip
        line(v.label, "run → PONG, bench_small boot() (0.25 s PING, 10 ms)",
             [h["bench_small_boot"] for h in rows])  # fmt: skip
        line(v.label, "`uniklab run --wait` CLI wall time", [h["cli_run_wait"] for h in rows])
        line(v.label, "Lab.run() returns (QEMU daemonized)", [r["run_returned"] for r in res[key]])
    print(f"  {LINUX.label:15s} {'first run in this UNIKLAB_HOME (+KVM probe if fresh)':54s} "
          f"{first_run:.3f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({**res, "first_run": first_run}, indent=1))
    for iv in lab.ps():
        lab.destroy(iv.name)


if __name__ == "__main__":
    main()
