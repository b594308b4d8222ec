"""Benchmark the app images (apache, nginx, memcached) against the same servers run natively.

For each app, in one run: image size, run-to-ready (``run --wait``: boot + the recipe's
probe), the smallest guest memory that still serves (searched in 8 MB steps), and
requests/s with a bounded load (``ab -n 2000 -c 8`` for HTTP, 8 Python clients doing
set/get for memcached) against the guest's forwarded 127.0.0.1 port and against the same
server, same config, run natively on 127.0.0.1.  All traffic stays on 127.0.0.1.

Usage: python bench/bench_apps.py [--apps apache,nginx,memcached] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from uniklab.backends.hostinfo import choose_accel
from uniklab.bake import recipe
from uniklab.errors import UniklabError
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths
from uniklab.ports import free_port

APPS = ("apache", "nginx", "memcached")
REQUESTS, CONCURRENCY = 2000, 8
BOOT_TIMEOUT = 60.0
LOAD_TIMEOUT = 120


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def ab(port: int) -> float:
    """Requests/s of ``ab -n 2000 -c 8`` against GET / (0 if any request failed)."""
    out = subprocess.run(
        ["ab", "-q", "-n", str(REQUESTS), "-c", str(CONCURRENCY), "-s", "10",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=LOAD_TIMEOUT, check=False,
    ).stdout  # fmt: skip
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    if not rps or (failed and int(failed.group(1))):
        return 0.0
    return float(rps.group(1))


def memcached_load(port: int) -> float:
    """Requests/s of 8 clients alternating set and get, 2000 requests in all."""
    per = REQUESTS // CONCURRENCY
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                f = s.makefile("rwb")
                for i in range(per // 2):
                    key = f"bench{n}-{i}"
                    f.write(f"set {key} 0 0 5\r\nhello\r\nget {key}\r\n".encode())
                    f.flush()
                    if f.readline() != b"STORED\r\n":
                        raise ValueError("set failed")
                    for _ in range(3):
                        f.readline()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CONCURRENCY)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_TIMEOUT)
    took = time.monotonic() - start
    return 0.0 if errors else per * CONCURRENCY / took


def load(app: str, port: int) -> float:
    return memcached_load(port) if app == "memcached" else ab(port)


@contextmanager
def native(app: str) -> Iterator[int]:
    """The app's binary, run on this host with the recipe's own config, on a free port."""
    rec = recipe.load(app)[0]
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix=f"ukl-native-{app}-", dir="/tmp"))
    tmp.chmod(0o755)
    argv: list[str]
    if app == "memcached":
        argv = [rec.binary, "-u", "memcache", "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                "-m", "64", "-t", "2", "-c", "1024"]  # fmt: skip
    else:
        assert rec.docroot and rec.page
        docroot = tmp / "www"
        docroot.mkdir(mode=0o755)
        (docroot / "index.html").write_text(rec.page)
        conf_spec = next(f for f in rec.files if f.dest.endswith(".conf"))
        text = (conf_spec.content or "").replace(rec.docroot, str(docroot))
        text = text.replace("/run/", f"{tmp}/").replace(
            "DefaultRuntimeDir /run", f"DefaultRuntimeDir {tmp}"
        )
        text = text.replace("Listen 80", f"Listen 127.0.0.1:{port}")
        text = text.replace("listen 80 ", f"listen 127.0.0.1:{port} ")
        conf = tmp / "server.conf"
        conf.write_text(text)
        if app == "apache":
            argv = [rec.binary, "-DFOREGROUND", "-f", str(conf)]
        else:
            argv = [rec.binary, "-c", str(conf)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def boot(lab: Lab, app: str, memory: str) -> float | None:
    """Run ``app`` with ``memory`` and wait until its probe passes; seconds, or None."""
    start = time.monotonic()
    try:
        lab.run(app, RunOptions(name="bench", memory=memory, timeout=BOOT_TIMEOUT))
    except UniklabError:
        return None
    return time.monotonic() - start


def memory_floor(lab: Lab, app: str, lo: int, hi: int, step: int = 8) -> int:
    """Smallest memory (MiB, multiple of ``step``) at which the app still serves."""
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        ok = boot(lab, app, f"{mid}M") is not None
        if ok:
            lab.destroy("bench")
        print(f"  {app} at {mid}M: {'serves' if ok else 'fails'}", flush=True)
        hi, lo = (mid, lo) if ok else (hi, mid)
    return hi


def bench_app(lab: Lab, app: str) -> dict[str, object]:
    m = lab.bake(app).manifest
    took = boot(lab, app, m.memory)
    guest_rps = 0.0
    if took is not None:
        port = lab.ip("bench").ports[0][0]
        load(app, port)  # warm-up, not counted
        guest_rps = load(app, port)
        lab.destroy("bench")
    floor = memory_floor(lab, app, lo=64, hi=int(m.memory.rstrip("M")))
    with native(app) as port:
        load(app, port)
        native_rps = load(app, port)
    return {
        "app": app,
        "image_mb": round(m.size / 2**20, 1),
        "initrd_mb": round(m.initrd_size / 2**20, 1),
        "run_to_ready_s": None if took is None else round(took, 2),
        "memory_floor_mb": floor,
        "guest_rps": round(guest_rps),
        "native_rps": round(native_rps),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", default=",".join(APPS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    apps = [a for a in args.apps.split(",") if a]
    home = Path(tempfile.mkdtemp(prefix="ukl-bapps-", dir="/tmp"))
    lab = Lab(Paths(home))
    rows: list[dict[str, object]] = []
    try:
        accel, _ = choose_accel(None)
        for app in apps:
            print(f"{app}...", flush=True)
            rows.append(bench_app(lab, app))
        hdr = ("app", "image MB (initrd)", f"run→ready s ({accel})", "min memory",
               "guest req/s", "native req/s")  # fmt: skip
        print(f"\n{hdr[0]:10} {hdr[1]:18} {hdr[2]:18} {hdr[3]:11} {hdr[4]:12} {hdr[5]}")
        for r in rows:
            size = f"{r['image_mb']} ({r['initrd_mb']})"
            ready = "fails" if r["run_to_ready_s"] is None else str(r["run_to_ready_s"])
            print(
                f"{r['app']!s:10} {size:18} {ready:18} {str(r['memory_floor_mb']) + ' MB':11} "
                f"{r['guest_rps']!s:12} {r['native_rps']}"
            )
        print(f"load: {REQUESTS} requests, {CONCURRENCY} concurrent, to 127.0.0.1 only")
        if args.json:
            args.json.write_text(json.dumps({"accel": accel, "apps": rows}, indent=2))
    finally:
        for v in lab.ps():
            lab.destroy(v.name)
        lab.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
