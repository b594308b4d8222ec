"""Readiness probes and the wait strategy around them (after testcontainers' waiting_utils).

A probe makes one attempt and either returns a short success detail or raises.  ``wait``
retries it until a deadline, treating the listed errors as transient, and on timeout
raises ProbeTimeoutError carrying the last error and the console tail.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from uniklab import signals
from uniklab.errors import ProbeTimeoutError
from uniklab.net import netns


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int | None
    netns: str | None = None  # connect from inside this network namespace
    path: str | None = None  # a UNIX socket instead (a channel: uniklab.channels)

    def connect(self, timeout: float) -> socket.socket:
        """A connected stream socket to the endpoint."""
        if self.path is None:
            if self.port is None:
                raise ValueError("no port to probe")
            return socket.create_connection((self.host, self.port), timeout=timeout)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(self.path)
        except BaseException:
            s.close()
            raise
        return s

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    latency_ms: float


class Probe(Protocol):
    @property
    def name(self) -> str: ...

    def attempt(self, endpoint: Endpoint, timeout: float) -> str:
        """One try; return a detail string or raise."""
        ...


TRANSIENT: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
ATTEMPT = 1.0  # seconds an attempt of ``wait`` may take at most
# ... on a channel (Endpoint.path): its round trips cross the proxies (on Xen: ssh, the
# dom0, a vchan) and it serves one connection at a time, so an attempt given up early
# only leaves the next one queued behind it; it waits for its replies instead.
CHANNEL_ATTEMPT = 10.0


def once(probe: Probe, endpoint: Endpoint, timeout: float = 3.0) -> ProbeResult:
    start = time.monotonic()
    try:
        detail = _attempt(probe, endpoint, timeout)
    except Exception as exc:  # one attempt: report any failure as a result
        return ProbeResult(False, f"{type(exc).__name__}: {exc}", _ms(start))
    return ProbeResult(True, detail, _ms(start))


def _attempt(probe: Probe, endpoint: Endpoint, timeout: float) -> str:
    with netns.inside(endpoint.netns):
        return probe.attempt(endpoint, timeout)


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 2)


def wait(
    probe: Probe,
    endpoint: Callable[[], Endpoint],
    *,
    timeout: float,
    interval: float = 0.1,
    alive: Callable[[], bool] = lambda: True,
    console_tail: Callable[[], str] = lambda: "",
    why_stopped: Callable[[], str] = lambda: "",
    transient: tuple[type[BaseException], ...] = TRANSIENT,
) -> ProbeResult:
    """Retry ``probe`` until it succeeds, the guest dies, or ``timeout`` passes; a guest
    that died is named with ``why_stopped`` (its console's last word: a panic, an exit)."""
    start = time.monotonic()
    deadline = start + timeout
    last = "not tried"
    while True:
        signals.raise_pending()  # a SIGTERM swallowed where it landed (an import) stops here
        # Short attempts: QEMU's user-mode forwarder accepts before the guest listens, and
        # an attempt stuck on such a connection would hold readiness back by its timeout.
        # Not on a channel (CHANNEL_ATTEMPT).
        try:
            where = endpoint()  # may not be known yet (an address by DHCP): transient
            cap = CHANNEL_ATTEMPT if where.path else ATTEMPT
            attempt_timeout = max(0.2, min(cap, deadline - time.monotonic()))
            detail = _attempt(probe, where, attempt_timeout)
            return ProbeResult(True, detail, _ms(start))
        except transient as exc:
            last = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a probe that fails oddly is still not ready
            last = f"{type(exc).__name__}: {exc}"
        if not alive():
            why = why_stopped()
            raise ProbeTimeoutError(
                f"{probe.name} probe: the guest stopped before it was ready"
                + (f" ({why})" if why else ""),
                last_error=last,
                console_tail=console_tail(),
            )
        if time.monotonic() >= deadline:
            raise ProbeTimeoutError(
                f"{probe.name} probe not ready after {timeout:.0f}s",
                last_error=last,
                console_tail=console_tail(),
            )
        time.sleep(interval)
