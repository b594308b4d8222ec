"""Placement: the host that `run --host auto` (every host, this machine included) or
`--host a,b` (a pool) starts a guest on, among the hosts of every engine (QEMU here, `xl`
over SSH, libvirt URIs).

Hosts at their instance limit (``Host.max_instances``) or whose engine cannot run the
request are left out without asking them; the others are asked for their free memory all
at once, each answer bounded by ``ASK_TIMEOUT``.  A host that fails or does not answer in
time is skipped with one warning line.  Its question is left running in a daemon thread
(libvirt's C calls have no timeout of their own; a daemon thread never holds up the
process's exit), on a backend made for the question, never the Lab's own (whose
connection lock the stuck call would hold).  Of those that answered, the one with the most
free memory, less what guests still starting there will take, wins.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uniklab import validate
from uniklab.backends import registry
from uniklab.errors import HostFullError, UniklabError, UsageError

if TYPE_CHECKING:
    from uniklab.hosts.inventory import Host
    from uniklab.lab import Lab

log = logging.getLogger(__name__)

AUTO = "auto"
ASK_TIMEOUT = 15.0
"""Seconds a host has to say how much memory it has free.  A dead SSH host costs its
connect timeout (10 s) and answers within it; this bounds one that accepts and then says
nothing."""


def pool(spec: str) -> tuple[str, ...] | None:
    """The hosts ``--host SPEC`` chooses among: ``()`` for ``auto`` (all of them), the
    names of ``a,b``, or None when SPEC names one host (no choice to make)."""
    if spec == AUTO:
        return ()
    if "," not in spec:
        return None
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        raise UsageError(f"invalid host pool {validate.short(spec)}: e.g. kvm1,xd3")
    for n in names:
        validate.name(n, "host name")
    if len(set(names)) != len(names):
        raise UsageError(f"host pool {validate.short(spec)} names a host twice")
    return names


def check(spec: str) -> None:
    """``spec`` is a host name, ``auto`` or a pool of host names (a UsageError if not)."""
    if pool(spec) is None:
        validate.name(spec, "host name")


@dataclass(frozen=True)
class Candidate:
    host: str
    free_mb: int  # what the host says, less what guests starting there will take
    live: int  # instances there (running, paused, starting)
    limit: int | None

    @property
    def full(self) -> bool:
        return self.limit is not None and self.live >= self.limit


def rank(candidates: Sequence[Candidate], memory_mb: int) -> list[Candidate]:
    """Those with room for one more guest of ``memory_mb``, most free memory first (on a
    tie, the fewest instances, then the name: the same answer every time)."""
    fit = [c for c in candidates if not c.full and c.free_mb >= memory_mb]
    return sorted(fit, key=lambda c: (-c.free_mb, c.live, c.host))


def ask_all(
    hosts: Sequence[Host], ask: Callable[[Host], int], *, timeout: float = ASK_TIMEOUT
) -> tuple[dict[str, int], dict[str, str]]:
    """``ask`` each host at once: (what each that answered said, why each other did not)."""
    answers: dict[str, int] = {}
    failures: dict[str, str] = {}

    def one(h: Host) -> None:
        try:
            answers[h.name] = ask(h)
        except UniklabError as exc:
            failures[h.name] = str(exc)
        except Exception as exc:  # a binding's own error: still one host's failure
            failures[h.name] = f"{type(exc).__name__}: {exc}"

    threads = [
        threading.Thread(target=one, args=(h,), name=f"place-{h.name}", daemon=True)
        for h in hosts
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for h in hosts:
        if h.name not in answers and h.name not in failures:
            failures[h.name] = f"did not answer within {timeout:g} s"
    return dict(answers), dict(failures)


def free_memory(lab: Lab, h: Host, *, timeout: float = ASK_TIMEOUT) -> int:
    """Host ``h``'s free memory (MB), asked through a backend made for this question."""
    ctx = registry.BackendContext(
        host=h, executor=lab.hosts.executor(h), cache=lab.paths.cache
    )
    backend = registry.create(registry.for_host(h).name, ctx)
    return backend.facts(timeout=timeout).free_memory_mb


def place(
    lab: Lab,
    spec: str,
    *,
    memory_mb: int,
    unfit: Callable[[Host], str | None] = lambda _h: None,
    timeout: float = ASK_TIMEOUT,
) -> Host:
    """The host of pool ``spec`` (``auto``: every host) a guest of ``memory_mb`` goes to;
    ``unfit`` says why a host's engine cannot run this guest (None: it can)."""
    from uniklab.state.store import LIVE

    names = pool(spec)
    hosts = (
        [lab.hosts.get(n) for n in names]
        if names
        else [lab.hosts.get("local"), *lab.hosts.ls()]
    )
    live: dict[str, int] = {}
    starting: dict[str, int] = {}
    for r in lab.store.instances():
        if r.state in LIVE:
            live[r.host] = live.get(r.host, 0) + 1
        if r.state == LIVE[0]:  # creating: its memory is not taken yet
            starting[r.host] = starting.get(r.host, 0) + r.memory_mb
    why: dict[str, str] = {}
    asked = []
    for h in hosts:
        engine = registry.for_host(h)
        if engine.local_only and not h.is_local:
            why[h.name] = f"{engine.name} runs guests on this machine only"
        elif h.max_instances is not None and live.get(h.name, 0) >= h.max_instances:
            why[h.name] = f"full ({live.get(h.name, 0)} of {h.max_instances} instances)"
        elif (reason := unfit(h)) is not None:
            why[h.name] = reason
        else:
            asked.append(h)
    answers, failures = ask_all(
        asked, lambda h: free_memory(lab, h, timeout=timeout), timeout=timeout
    )
    for name, reason in failures.items():
        log.warning("host %s skipped: %s", name, reason)
    why |= failures
    candidates = [
        Candidate(
            name,
            free - starting.get(name, 0),
            live.get(name, 0),
            next(h.max_instances for h in asked if h.name == name),
        )
        for name, free in answers.items()
    ]
    for c in candidates:
        if c.free_mb < memory_mb:
            why[c.host] = f"{c.free_mb} MB free, {memory_mb} MB wanted"
    ranked = rank(candidates, memory_mb)
    if not ranked:
        said = "; ".join(f"{n}: {r}" for n, r in why.items()) or "no hosts"
        raise HostFullError(f"no host can take a {memory_mb} MB guest ({said})")
    best = ranked[0]
    log.info("placing on %s (%d MB free, %d instance(s))", best.host, best.free_mb, best.live)
    return next(h for h in asked if h.name == best.host)


def without(spec: str, lab: Lab, host: str) -> str | None:
    """Pool ``spec`` less ``host`` (``auto``: every host but it), as a ``--host`` value
    (a pool of one is ``a,``); None when nothing is left."""
    names = pool(spec) or ("local", *(h.name for h in lab.hosts.ls()))
    rest = [n for n in names if n != host]
    return ",".join(rest) + ("," if len(rest) == 1 else "") if rest else None
