"""Linux's ``/proc/net/dev``: the byte counters of each network interface.

Read for the host side of a guest's NICs: a QEMU's taps (``/proc/PID/net/dev``, the
namespace QEMU runs in) or a Xen domain's vifs (the dom0's ``/proc/net/dev``).  The host
side receives what the guest sends, so ``guest_bytes`` swaps the directions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Counters:
    rx_bytes: int
    tx_bytes: int


def parse(text: str) -> dict[str, Counters]:
    """``{interface: counters}`` from the file's text (two header lines, then
    ``name: rx_bytes packets errs drop fifo frame compressed multicast tx_bytes ...``)."""
    out: dict[str, Counters] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 9:
            continue
        try:
            out[name.strip()] = Counters(int(fields[0]), int(fields[8]))
        except ValueError:
            continue
    return out


def guest_bytes(
    counters: dict[str, Counters], host_side: Iterable[str] | Callable[[str], bool]
) -> tuple[int, int] | None:
    """(received, sent) by the guest whose NICs' host ends are ``host_side`` (names, or a
    test on a name); None when none of them is found."""
    pick = host_side if callable(host_side) else set(host_side).__contains__
    found = [c for name, c in counters.items() if pick(name)]
    if not found:
        return None
    return sum(c.tx_bytes for c in found), sum(c.rx_bytes for c in found)
