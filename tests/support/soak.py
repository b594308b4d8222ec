"""Soak and load drivers shared by ``bench/bench_soak.py`` and the e2e tests.

``snapshot``/``compare``: what a UNIKLAB_HOME and this process hold (descriptors, taps,
bridges, leases, processes naming the home, runtime directories, rows, disk use), before
and after, and what grew.  ``soak``: run/destroy cycles through long-lived API clients, a
few at once, each guest PINGed before it goes.  ``race``: ``ps`` from many processes and
threads while runs and destroys race, checking every listing against what had happened.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis
from pyroute2 import IPRoute

import uniklab
from uniklab.errors import NotFoundError
from uniklab.net import dnsmasq
from uniklab.net.service import short_hash

LOCKED = "database is locked"


# -- snapshots ------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """Each resource as a multiset of keys: what differs between two is what grew."""

    resources: dict[str, collections.Counter[str]]
    disk: dict[str, int]  # path under the home -> bytes
    db_in_use: int = 0  # bytes of state.db's pages in use (not on its free list)

    def count(self, name: str) -> int:
        return sum(self.resources[name].values())

    @property
    def disk_bytes(self) -> int:
        return sum(self.disk.values())


RESOURCES = (
    ("fds", "open descriptors of this process"),
    ("zombies", "unreaped children of this process"),
    ("taps", "taps (the home's, and in the namespace)"),
    ("bridges", "bridges (the home's, and in the namespace)"),
    ("leases", "DHCP leases of the home's networks"),
    ("processes", "processes naming the home (by program)"),
    ("rundirs", "runtime directories (run/, net/)"),
    ("rows", "state rows (instances, networks)"),
)


def _fd_kind(target: str) -> str:
    # socket:[123] / pipe:[456]: the inode changes with every new one; the kind is the key
    kind, sep, _ = target.partition(":[")
    return kind if sep else target


def _fds() -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    fd_dir = "/proc/self/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            out[_fd_kind(os.readlink(f"{fd_dir}/{fd}"))] += 1
    return out


def _proc_cmdlines() -> Iterator[tuple[int, list[str]]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry), [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def _zombies() -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            out[stat[stat.index("(") + 1 : stat.rindex(")")]] += 1
    return out


def naming(home: Path) -> list[tuple[int, str]]:
    """(pid, program) of the processes, other than this one, whose arguments name ``home``."""
    marker = str(home)
    return [
        (pid, Path(argv[0]).name)
        for pid, argv in _proc_cmdlines()
        if pid != os.getpid() and any(marker in a for a in argv)
    ]


def _processes(home: Path) -> collections.Counter[str]:
    return collections.Counter(program for _pid, program in naming(home))


def _links(netns: str | None) -> list[tuple[str, str]]:
    """(name, kind) of every link of a namespace; kind "tun" for taps."""
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        out = []
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else ""
            out.append((str(link.get_attr("IFLA_IFNAME")), str(kind or "")))
        return out


def _net_links(home: Path, netns: str | None) -> tuple[collections.Counter[str], ...]:
    # uniklab names its taps and bridges after a hash of the home's net/ directory, so in
    # the main namespace only this home's count; in the namespace the caller owns, all do.
    tag = short_hash(str(home / "net"))
    mine = [(n, k) for n, k in _links(None) if n.startswith((f"ukt{tag}", f"ukb{tag}"))]
    if netns:
        mine += [(f"{netns}/{n}", k) for n, k in _links(netns) if n != "lo"]
    taps = collections.Counter(n for n, k in mine if k == "tun")
    bridges = collections.Counter(n for n, k in mine if k == "bridge")
    return taps, bridges


# Run in a child process: opening the store here would perturb what is measured (SQLite
# keeps a closed connection's descriptor while others of this process hold locks on the
# file), and the rows are read as another uniklab process would see them.
_READ_ROWS = """
import json, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
def one(sql):
    return db.execute(sql).fetchone()[0]
print(json.dumps({
    "instances": db.execute("SELECT name, state FROM instances").fetchall(),
    "networks": db.execute("SELECT name, rundir FROM networks").fetchall(),
    "in_use": (one("PRAGMA page_count") - one("PRAGMA freelist_count")) * one("PRAGMA page_size"),
}))
"""


def _state(home: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    rows: collections.Counter[str] = collections.Counter()
    leases: collections.Counter[str] = collections.Counter()
    out = subprocess.run(
        [sys.executable, "-c", _READ_ROWS, str(home / "state.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    for name, state in doc["instances"]:
        rows[f"instance {name} ({state})"] += 1
    for name, rundir in doc["networks"]:
        rows[f"network {name}"] += 1
        files = dnsmasq.DnsmasqFiles(Path(rundir))
        with contextlib.suppress(OSError):
            for lease in dnsmasq.parse_leases(files.leases.read_text()):
                leases[f"{name} {lease.mac} {lease.ip}"] += 1
    return rows, leases, int(doc["in_use"])


# The event log grows with every command by design; its size is bounded by rotation
# (events.MAX_BYTES, one old generation: tests/lab/test_events.py), not by the soak.
BOUNDED_ELSEWHERE = ("events.jsonl", "events.jsonl.1")


def _disk(home: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for root, _dirs, files in os.walk(home):
        for f in files:
            if Path(root) == home and f in BOUNDED_ELSEWHERE:
                continue
            p = Path(root, f)
            with contextlib.suppress(OSError):
                out[str(p.relative_to(home))] = p.lstat().st_size
    return out


def snapshot(home: Path, netns: str | None = None) -> Snapshot:
    """What the home and this process hold now.  Descriptors are counted first: looking
    at the rest opens some for a moment.  Callers switch the cyclic garbage collector off
    between two snapshots: a descriptor that only it would close (an unclosed sqlite3
    connection is in a reference cycle) counts as leaked."""
    fds = _fds()
    taps, bridges = _net_links(home, netns)
    rows, leases, db_in_use = _state(home)
    rundirs: collections.Counter[str] = collections.Counter()
    for sub in ("run", "net"):
        if (home / sub).is_dir():
            rundirs.update(f"{sub}/{p.name}" for p in (home / sub).iterdir())
    return Snapshot(
        resources={
            "fds": fds,
            "zombies": _zombies(),
            "taps": taps,
            "bridges": bridges,
            "leases": leases,
            "processes": _processes(home),
            "rundirs": rundirs,
            "rows": rows,
        },
        disk=_disk(home),
        db_in_use=db_in_use,
    )


@dataclass(frozen=True)
class Growth:
    resource: str
    before: int
    after: int
    grown: list[str]  # what is new (keys, or files and their growth)

    @property
    def leaked(self) -> bool:
        return bool(self.grown)


# SQLite's files keep their largest size: the WAL is reused in place after each
# checkpoint (its size is that of the biggest burst of writes, not a count of cycles), and
# the database reuses the pages on its free list.  What counts for the database is the
# pages in use.
WAL = ("state.db-wal", "state.db-shm")


def _disk_growth(before: Snapshot, after: Snapshot) -> list[str]:
    out = []
    db_grew = after.db_in_use > before.db_in_use
    for path, size in after.disk.items():
        grew = size - before.disk.get(path, 0)
        if grew <= 0 or path in WAL or (path == "state.db" and not db_grew):
            continue
        out.append((grew, f"{path} +{grew} B"))
    if db_grew:
        out.append((0, f"state.db pages in use +{after.db_in_use - before.db_in_use} B"))
    return [text for _, text in sorted(out, reverse=True)]


def compare(before: Snapshot, after: Snapshot) -> list[Growth]:
    """One line per resource; ``grown`` lists what is new: keys, or files that are new or
    larger (SQLite's, see ``WAL``, only if the database's pages in use grew)."""
    out = []
    for name, _desc in RESOURCES:
        new = after.resources[name] - before.resources[name]
        grown = [f"{k} (+{n})" if n > 1 else k for k, n in sorted(new.items())]
        out.append(Growth(name, before.count(name), after.count(name), grown))
    grown = _disk_growth(before, after)
    out.append(Growth("disk", before.disk_bytes, after.disk_bytes, grown))
    return out


def settle(
    home: Path, before: Snapshot, netns: str | None = None, *, timeout: float = 15.0
) -> tuple[Snapshot, list[Growth]]:
    """Snapshot again until nothing grew or ``timeout``: a released lease and an exiting
    process take a moment to go."""
    deadline = time.monotonic() + timeout
    while True:
        after = snapshot(home, netns)
        growth = compare(before, after)
        if not any(g.leaked for g in growth) or time.monotonic() > deadline:
            return after, growth
        time.sleep(0.5)


def leak_table(growth: Sequence[Growth]) -> str:
    verdict = {True: "YES", False: "no"}
    lines = [f"{'resource':10} {'before':>10} {'after':>10} {'grown':>6}  new"]
    for g in growth:
        shown = ", ".join(g.grown[:6]) + (
            f", ... {len(g.grown) - 6} more" if len(g.grown) > 6 else ""
        )
        lines.append(
            f"{g.resource:10} {g.before:>10} {g.after:>10} {verdict[g.leaked]:>6}  {shown}"
        )
    return "\n".join(lines)


# -- soak -----------------------------------------------------------------------------
@dataclass
class SoakResult:
    cycles: int
    seconds: float  # wall time of the measured cycles (warm-up excluded)
    durations: dict[str, list[float]]  # per network mode: run -> PONG -> destroyed, seconds
    failures: list[str]
    before: Snapshot
    after: Snapshot
    growth: list[Growth]

    @property
    def per_minute(self) -> float:
        return self.cycles / self.seconds * 60 if self.seconds else 0.0

    @property
    def leaked(self) -> list[Growth]:
        return [g for g in self.growth if g.leaked]


def interleave(user: int, bridged: int) -> list[str]:
    """A cycle plan: ``user`` user-mode and ``bridged`` bridged cycles, spread evenly."""
    plan = [("user", i / user) for i in range(user)] + [
        ("bridged", (i + 0.5) / bridged) for i in range(bridged)
    ]
    return [mode for mode, _ in sorted(plan, key=lambda x: x[1])]


def wait_pong(vm: uniklab.Instance, timeout: float) -> None:
    """PING until PONG, from where the guest is reachable (its namespace, if bridged)."""
    deadline = time.monotonic() + timeout
    next_alive_check = time.monotonic() + 3
    client: redis.Redis | None = None
    last = "nothing tried"
    try:
        while time.monotonic() < deadline:
            try:
                if client is None:  # a bridged guest's address is known once it has a lease
                    client = vm.redis(socket_timeout=1, socket_connect_timeout=1)
                if client.ping():
                    return
            except (redis.RedisError, NotFoundError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > next_alive_check:
                next_alive_check = time.monotonic() + 3
                if vm.state != "running":
                    raise RuntimeError(f"{vm.name} is {vm.state}: {last}\n{vm.logs()[-800:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{vm.name}: no PONG in {timeout:.0f}s ({last})\n{vm.logs()[-800:]}")
    finally:
        if client is not None:
            client.connection_pool.disconnect()


def cycle(client: uniklab.Client, image: str, name: str, net: str | None, timeout: float) -> float:
    """run -> PONG -> destroy; seconds.  Whatever happens, the instance is destroyed."""
    start = time.monotonic()
    vm = client.run(image, name=name, net=net, wait=False, labels={"soak": "1"})
    try:
        wait_pong(vm, timeout)
    finally:
        vm.destroy()
    return time.monotonic() - start


def soak(
    home: Path,
    image: str,
    plan: Sequence[str],
    *,
    concurrency: int = 3,
    network: str | None = None,
    netns: str | None = None,
    timeout: float = 180.0,
    progress: Callable[[int, int], None] | None = None,
) -> SoakResult:
    """Run the cycles of ``plan`` ("user" or "bridged", on ``network``), ``concurrency``
    at once.  Each worker thread owns one ``uniklab.Client`` for the whole soak (a client
    is bound to the thread that made it: its SQLite connection is).  Each worker runs one
    warm-up cycle of each mode; the snapshots are taken after the warm-up, with every
    client open, and after the last cycle, before the clients close.  The cyclic garbage
    collector is off in between (see ``snapshot``)."""
    todo = list(enumerate(plan))
    lock = threading.Lock()
    durations: dict[str, list[float]] = {mode: [] for mode in dict.fromkeys(plan)}
    failures: list[str] = []
    finished: list[int] = []
    warm, done = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1)
    go, release = threading.Event(), threading.Event()  # set after each snapshot

    def one(c: uniklab.Client, mode: str, name: str) -> float | None:
        try:
            return cycle(c, image, name, network if mode == "bridged" else None, timeout)
        except Exception as exc:
            with lock:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
            return None

    def worker(w: int) -> None:
        try:
            with uniklab.Client(home) as c:
                for mode in dict.fromkeys(plan):  # warm-up: one of each mode
                    one(c, mode, f"warm{w}-{mode[0]}")
                warm.wait()
                go.wait()
                while True:
                    with lock:
                        if not todo:
                            break
                        i, mode = todo.pop(0)
                    took = one(c, mode, f"soak{i}-{mode[0]}")
                    with lock:
                        finished.append(i)
                        if took is not None:
                            durations[mode].append(took)
                        if progress:
                            progress(len(finished), len(plan))
                done.wait()
                release.wait()
        except BaseException as exc:
            with lock:
                failures.append(f"worker {w}: {type(exc).__name__}: {exc}")
            warm.abort()
            done.abort()
            raise

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    collecting = gc.isenabled()
    try:
        warm.wait()
        gc.disable()
        before = snapshot(home, netns)
        start = time.monotonic()
        go.set()
        done.wait()
        seconds = time.monotonic() - start
        after, growth = settle(home, before, netns)
    finally:
        if collecting:
            gc.enable()
        go.set()
        release.set()
        for t in threads:
            t.join(60)
    return SoakResult(len(plan), seconds, durations, failures, before, after, growth)


# -- race -----------------------------------------------------------------------------
def cli(home: Path, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process (``python -m uniklab``), on ``home``."""
    env = {**os.environ, "UNIKLAB_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "uniklab", *argv],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Listing:
    """One ``ps``: when it started and ended, and what it listed (name -> state)."""

    via: str  # "cli" or "api"
    start: float
    end: float
    names: dict[str, str | None] | None  # name -> state (None: not said); None: it failed
    error: str = ""


@dataclass
class Life:
    """One racing instance: when its run returned and its destroy was called/returned."""

    name: str
    run_ok: float | None = None
    destroy_called: float | None = None
    destroy_ok: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class RaceResult:
    listings: list[Listing]
    lives: list[Life]
    seconds: float

    @property
    def locked(self) -> list[str]:
        found = [x.error for x in self.listings if LOCKED in x.error.lower()]
        return found + [e for life in self.lives for e in life.errors if LOCKED in e.lower()]

    @property
    def failed(self) -> list[str]:
        out = [f"ps ({x.via}): {x.error}" for x in self.listings if x.names is None]
        return out + [f"{life.name}: {e}" for life in self.lives for e in life.errors]

    @property
    def lost(self) -> list[str]:
        """Listings that contradict what had happened: a row missing (or not running)
        between its run's success and its destroy, or still there after its destroy."""
        out = []
        for x in self.listings:
            if x.names is None:
                continue
            for life in self.lives:
                listed = x.names.get(life.name)
                live = life.run_ok is not None and life.run_ok < x.start
                live = live and (life.destroy_called is None or x.end < life.destroy_called)
                if live and (life.name not in x.names or listed not in (None, "running")):
                    out.append(f"ps ({x.via}) at {x.start:.2f}: {life.name} {listed or 'missing'}")
                gone = life.destroy_ok is not None and life.destroy_ok < x.start
                if gone and life.name in x.names:
                    out.append(f"ps ({x.via}) at {x.start:.2f}: {life.name} listed after destroy")
        return out

    @property
    def witnessed(self) -> int:
        """(listing, instance) pairs in which the instance had to be listed."""
        return sum(
            1
            for x in self.listings
            for life in self.lives
            if x.names is not None
            and life.run_ok is not None
            and life.run_ok < x.start
            and (life.destroy_called is None or x.end < life.destroy_called)
        )

    def latencies(self, via: str) -> list[float]:
        return sorted(
            x.end - x.start for x in self.listings if x.via == via and x.names is not None
        )


def race(
    home: Path,
    image: str,
    *,
    runs: int = 10,
    ps_cli: int = 100,
    ps_pool: int = 8,
    api_threads: int = 2,
    api_interval: float = 0.1,
) -> RaceResult:
    """``ps_cli`` listings by ``python -m uniklab ps --json``, ``ps_pool`` at a time, and
    ``api_threads`` threads listing in-process (every ``api_interval`` s) until those are
    done, while ``runs`` instances are run (``run --no-wait``) and destroyed, each in its
    own process.  The runs are spread over the listings: run ``i`` starts once ``i``
    tenths of 80 % of them are done and is destroyed ``2 * ps_pool`` listings later, so
    runs and destroys overlap each other and every listing.  The in-process threads
    alternate between a client of their own and the module-level ``uniklab.ps`` (a new
    client each call): several stores open at once in one process."""
    t0 = time.monotonic()
    lives = [Life(f"race{i}") for i in range(runs)]
    listings: list[Listing] = []
    listed = threading.Condition()
    cli_done = threading.Event()

    def add(x: Listing) -> None:
        with listed:
            listings.append(x)
            listed.notify_all()

    def cli_listings() -> int:
        return sum(1 for x in listings if x.via == "cli")

    def after_listings(n: int) -> None:
        with listed:
            listed.wait_for(lambda: cli_listings() >= n or cli_done.is_set(), timeout=600)

    def ps_by_cli(_i: int) -> None:
        start = time.monotonic()
        r = cli(home, "ps", "--json")
        end = time.monotonic()
        try:
            if r.returncode != 0:
                raise ValueError(f"rc {r.returncode}")
            names: dict[str, str | None] = {
                str(i["name"]): str(i["state"]) for i in json.loads(r.stdout)
            }
            add(Listing("cli", start, end, names, r.stderr.strip()))
        except (ValueError, KeyError, TypeError) as exc:
            add(Listing("cli", start, end, None, f"{exc}: {r.stderr.strip()[-500:]}"))

    def ps_in_process(k: int) -> None:
        with uniklab.Client(home) as own:
            n = 0
            while not cli_done.is_set():
                start = time.monotonic()
                try:
                    found = own.ps() if (n + k) % 2 == 0 else uniklab.ps(home=home)
                    # names only: Instance.state would ask the store again, later
                    add(Listing("api", start, time.monotonic(), {v.name: None for v in found}))
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    add(Listing("api", start, time.monotonic(), None, error))
                n += 1
                cli_done.wait(api_interval)

    def live(i: int, life: Life) -> None:
        after_listings(i * ps_cli * 8 // (runs * 10))
        r = cli(home, "run", image, "--name", life.name, "--no-wait")
        if r.returncode != 0:
            life.errors.append(f"run rc {r.returncode}: {r.stderr.strip()[-500:]}")
            return
        with listed:
            life.run_ok, seen = time.monotonic(), cli_listings()
        after_listings(seen + 2 * ps_pool)
        life.destroy_called = time.monotonic()
        r = cli(home, "destroy", life.name)
        if r.returncode != 0:
            life.errors.append(f"destroy rc {r.returncode}: {r.stderr.strip()[-500:]}")
            return
        life.destroy_ok = time.monotonic()

    with (
        ThreadPoolExecutor(ps_pool) as ps_ex,
        ThreadPoolExecutor(runs) as run_ex,
        ThreadPoolExecutor(api_threads) as api_ex,
    ):
        api = [api_ex.submit(ps_in_process, k) for k in range(api_threads)]
        try:
            lived = [run_ex.submit(live, i, life) for i, life in enumerate(lives)]
            cli_ps = [ps_ex.submit(ps_by_cli, i) for i in range(ps_cli)]
            for f in cli_ps:
                f.result()
        finally:
            cli_done.set()
            with listed:
                listed.notify_all()
        for f in [*lived, *api]:
            f.result()
    return RaceResult(listings, lives, time.monotonic() - t0)


def race_figures(r: RaceResult) -> list[str]:
    def q(xs: list[float], p: float) -> str:
        return f"{xs[min(len(xs) - 1, int(p * len(xs)))]:.2f}s" if xs else "-"

    lines = []
    for via, what in (("cli", "`python -m uniklab ps --json`"), ("api", "in-process ps")):
        xs = r.latencies(via)
        n = sum(1 for x in r.listings if x.via == via)
        lines.append(f"{what}: {n} calls, {len(xs)} ok, median {q(xs, 0.5)}, p95 {q(xs, 0.95)}")
    ok = sum(1 for life in r.lives if life.destroy_ok is not None)
    lines.append(f"runs and destroys: {ok}/{len(r.lives)} completed, in {r.seconds:.1f}s")
    lines.append(f"listings that had to show a running instance: {r.witnessed}")
    lines.append(
        f"'{LOCKED}': {len(r.locked)}; lost or stale rows: {len(r.lost)}; "
        f"other failures: {len(r.failed)}"
    )
    return lines
