"""Start-up of the ``uniklab`` command: wall time of a few everyday invocations, side by
side with ``python -c pass`` (the floor: the interpreter alone), median of N runs each.

    python bench/bench_cli.py                       # prints a table
    python bench/bench_cli.py --save /tmp/before.json
    python bench/bench_cli.py --compare /tmp/before.json   # a "before" column next to now

Measured: ``python -c pass``; ``uniklab --help``; ``uniklab ps`` with 0 and with 100
instances; two bash completion requests, as bash's completion function asks them
(``_UNIKLAB_COMPLETE=bash_complete``): a verb (``uniklab ps<TAB>``) and an instance name
(``uniklab destroy <TAB>``).  The 100
instances are rows made directly in a temporary store and marked running, each pointing
at a live ``sleep`` whose command line carries the row's runtime directory (as
``bench_small.py``'s ``ps_latency`` does), so ``ps`` inspects 100 live processes as it
would 100 guests, without booting them.  ``uniklab`` is the console script next to this
interpreter (what a user types), each run a fresh process.

Python's bytecode cache is on, as for a user (pip compiles an installed wheel; a checkout
writes ``__pycache__``): the measured runs keep it in a temporary ``PYTHONPYCACHEPREFIX``,
written by the warm-up run, whatever ``PYTHONDONTWRITEBYTECODE`` says here.  ``--no-pyc``
sets ``PYTHONDONTWRITEBYTECODE``, the cache neither written nor moved: an editable checkout
that never wrote one compiles uniklab's modules on every run (tens of milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

GOAL_S = 0.15  # issue 16: each of these within 0.15 s wall on this machine


def uniklab_script() -> str:
    beside = Path(sys.executable).parent / "uniklab"
    return str(beside) if beside.exists() else shutil.which("uniklab") or "uniklab"


@contextmanager
def home_with(n: int) -> Iterator[Path]:
    """A temporary UNIKLAB_HOME whose store holds ``n`` running instances (live sleeps)."""
    from uniklab.paths import Paths
    from uniklab.state.store import RUNNING, Store

    home = Path(tempfile.mkdtemp(prefix="ukl-cli-", dir="/tmp"))
    paths = Paths(home).ensure()
    store = Store(paths.db)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n):
            rundir = home / "run" / f"p{i:03d}"
            rundir.mkdir(parents=True)
            # sh stays (a command follows sleep), its command line carrying the marker.
            proc = subprocess.Popen(
                ["sh", "-c", "sleep 600; :", str(rundir)], start_new_session=True
            )
            procs.append(proc)
            row = store.reserve(
                name=f"p{i:03d}",
                image="redis:small",
                digest="sha256:" + "0" * 64,
                backend="qemu",
                host="local",
                memory_mb=48,
                vcpus=1,
                owner_pid=os.getpid(),
                spec={},
                labels={},
            )
            store.update(
                row.id,
                state=RUNNING,
                pid=proc.pid,
                started=time.time(),
                runtime={"rundir": str(rundir), "accel": "tcg"},
                owner_pid=None,
            )
        for i, proc in enumerate(procs):
            _wait_for_exec(proc.pid, str(home / "run" / f"p{i:03d}"))
        yield home
    finally:
        for proc in procs:
            os.killpg(proc.pid, 9)
            proc.wait()
        store.close()
        shutil.rmtree(home, ignore_errors=True)


def _wait_for_exec(pid: int, marker: str, timeout: float = 10.0) -> None:
    """Until the child runs sh (its command line carries ``marker``): just forked, it is
    still this interpreter, and the first ``ps`` would mark that instance crashed."""
    deadline = time.monotonic() + timeout
    while marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit(f"pid {pid} did not exec sh in {timeout}s")
        time.sleep(0.005)


def timed(argv: Sequence[str], env: Mapping[str, str], runs: int) -> float:
    """Median wall time of ``runs`` runs of ``argv`` (one warm-up run first, not counted)."""
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter() - t
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
        if i:
            times.append(took)
    return statistics.median(times)


def measure(runs: int, instances: int, *, pyc: bool = True) -> dict[str, float]:
    uk = uniklab_script()
    drop = ("_UNIKLAB_COMPLETE", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    results: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ukl-pyc-") as pycache,
        home_with(0) as empty,
        home_with(instances) as full,
    ):
        if pyc:
            base["PYTHONPYCACHEPREFIX"] = pycache
        else:
            base["PYTHONDONTWRITEBYTECODE"] = "1"
        env0 = {**base, "UNIKLAB_HOME": str(empty)}
        envn = {**base, "UNIKLAB_HOME": str(full)}

        def complete(words: str, cword: int) -> dict[str, str]:
            return {
                **envn,
                "_UNIKLAB_COMPLETE": "bash_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(cword),
            }

        cases: list[tuple[str, list[str], Mapping[str, str]]] = [
            ("python -c pass (floor)", [sys.executable, "-c", "pass"], env0),
            ("uniklab --help", [uk, "--help"], env0),
            ("uniklab ps (0 instances)", [uk, "ps"], env0),
            (f"uniklab ps ({instances} instances)", [uk, "ps"], envn),
            ("completion: uniklab ps<TAB> (a verb)", [uk], complete("uniklab ps", 1)),
            (
                f"completion: uniklab destroy <TAB> ({instances} names)",
                [uk],
                complete("uniklab destroy ", 2),
            ),
        ]
        for label, argv, env in cases:
            results[label] = round(timed(argv, env, runs), 3)
        # Every run listed the instances as running (none was taken for a dead guest).
        listed = subprocess.run(
            [uk, "ps", "-q", "--filter", "state=running"],
            env=envn,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        if len(listed) != instances:
            raise SystemExit(f"{len(listed)} of {instances} instances still running")
    return results


def render(now: Mapping[str, float], before: Mapping[str, float] | None, runs: int) -> str:
    width = max(len(k) for k in now) + 2
    head = f"{'':{width}}" + (f"{'before (s)':>12}" if before else "") + f"{'now (s)':>10}"
    lines = [head, "-" * len(head)]
    for label, t in now.items():
        was = (
            f"{before[label]:>12.3f}"
            if before and label in before
            else (f"{'':>12}" if before else "")
        )
        mark = "" if label.startswith("python") else ("  ok" if t <= GOAL_S else "  > goal")
        lines.append(f"{label:{width}}{was}{t:>10.3f}{mark}")
    lines.append(f"median of {runs} runs each, wall clock; goal {GOAL_S} s; {os.cpu_count()} CPUs")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=11, help="runs per case (median)")
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--save", type=Path, help="write the figures as JSON here")
    ap.add_argument("--compare", type=Path, help="a saved JSON to show as 'before'")
    ap.add_argument("--no-pyc", action="store_true", help="without Python's bytecode cache")
    args = ap.parse_args()
    now = measure(args.runs, args.instances, pyc=not args.no_pyc)
    before = json.loads(args.compare.read_text())["results"] if args.compare else None
    print(render(now, before, args.runs))
    if args.save:
        args.save.write_text(
            json.dumps({"results": now, "runs": args.runs, "when": time.time()}, indent=2)
        )


if __name__ == "__main__":
    main()
