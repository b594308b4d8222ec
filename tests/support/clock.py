"""How far a guest's wall clock is from the host's, as Redis ``TIME`` shows it."""

from __future__ import annotations

import time

import redis


def clock_bound(r: redis.Redis) -> float:
    """How far Redis TIME is from the host's clock at least, in seconds: the server read
    its clock between ``before`` and ``after``, so a sample allows no less than its
    distance outside that window; the best of 20 samples (a loaded host only widens the
    windows, it cannot make a wrong clock look right)."""
    bounds = []
    for _ in range(20):
        before = time.time()
        sec, usec = r.time()
        after = time.time()
        guest = sec + usec / 1e6
        bounds.append(max(0.0, guest - after, before - guest))
    return min(bounds)
