"""Live figures of instances, one shape for ``uniklab stats`` and ``Instance.stats``.

A sample asks each instance's backend once (with its NICs' byte counters).  CPU% needs two
samples: the CPU time the hypervisor used between them over the wall time between them
(100% is one host CPU busy, as in ``docker stats`` and ``top``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uniklab.backends.base import Inspection
    from uniklab.lab import Lab
    from uniklab.state.store import InstanceRow

FIRST_INTERVAL = 0.5
"""Seconds between the two inspections of a single sample (``--no-stream``)."""
MAX_INTERVAL = 60.0


@dataclass(frozen=True)
class Stats:
    """What the hypervisor says about an instance right now."""

    state: str  # the instance's: running | exited | crashed | creating | ...
    uptime: float | None  # seconds since the hypervisor started
    cpu_seconds: float | None  # user + system time of the hypervisor process (Xen: domain)
    rss_bytes: int | None  # resident memory of the hypervisor process (Xen: the domain's)
    memory_mb: int  # guest memory
    vcpus: int
    name: str = ""
    cpu_percent: float | None = None  # over the interval between two samples; None: one only
    net_rx_bytes: int | None = None  # received by the guest; None: not counted (user-mode)
    net_tx_bytes: int | None = None  # sent by the guest

    def as_dict(self) -> dict[str, object]:
        """The fields, ``name`` first (``stats --json``)."""
        return {"name": self.name, **dataclasses.asdict(self)}


def of(row: InstanceRow, insp: Inspection | None, cpu_percent: float | None = None) -> Stats:
    return Stats(
        state=row.state,
        uptime=insp.uptime if insp else None,
        cpu_seconds=insp.cpu_seconds if insp else None,
        rss_bytes=insp.rss_bytes if insp else None,
        memory_mb=row.memory_mb,
        vcpus=row.vcpus,
        name=row.name,
        cpu_percent=cpu_percent,
        net_rx_bytes=insp.net_rx_bytes if insp else None,
        net_tx_bytes=insp.net_tx_bytes if insp else None,
    )


class Sampler:
    """Samples instances ``names`` (none: every live one) and keeps what CPU% needs of the
    previous sample."""

    def __init__(self, lab: Lab, names: Sequence[str] = ()) -> None:
        self.lab = lab
        self.names = list(dict.fromkeys(names))
        self._prev: dict[int, tuple[float, float]] = {}  # row id: (monotonic, cpu seconds)
        self._first = True

    def _rows(self, live: set[int]) -> list[InstanceRow]:
        if not self.names:
            return [r for r in self.lab.store.instances() if r.id in live]
        by_name = {r.name: r for r in self.lab.store.instances()}
        if self._first:  # an unknown name is an error; one destroyed meanwhile just goes
            for name in self.names:
                if name not in by_name:
                    self.lab.store.instance(name)  # raises NotFoundError
        return [by_name[n] for n in self.names if n in by_name]

    def sample(self) -> list[Stats]:
        live = set(self.lab.reconcile())
        rows = self._rows(live)
        self._first = False
        out = []
        for row in rows:
            insp = None
            if row.id in live:
                insp = self.lab.backend_of(row).inspect(self.lab.handle(row), net=True)
                if not insp.alive:
                    insp = None  # gone since reconcile: the next sample says how it ended
            now = time.monotonic()
            percent = None
            if insp is not None and insp.cpu_seconds is not None:
                before = self._prev.get(row.id)
                if before is not None and now > before[0] and insp.cpu_seconds >= before[1]:
                    percent = 100.0 * (insp.cpu_seconds - before[1]) / (now - before[0])
                self._prev[row.id] = (now, insp.cpu_seconds)
            else:
                self._prev.pop(row.id, None)
            out.append(of(row, insp, percent))
        return out

    def stream(self, interval: float = 1.0) -> Generator[list[Stats], None, None]:
        """A sample every ``interval`` seconds (bounded to [0.05, 60]), each with CPU%;
        the first comes one interval after the call."""
        interval = min(max(interval, 0.05), MAX_INTERVAL)
        self.sample()
        while True:
            time.sleep(interval)
            yield self.sample()


def once(lab: Lab, names: Sequence[str] = (), interval: float = FIRST_INTERVAL) -> list[Stats]:
    """One sample of ``names`` (none: every live instance), CPU% measured over ``interval``."""
    return next(Sampler(lab, names).stream(interval))
