"""Network namespaces: create, remove, and run socket code inside one.

A socket belongs to the namespace it was created in, so probes and address discovery
create their sockets inside ``inside(ns)`` and may keep using them afterwards.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import ModuleType

# setns() applies to the calling thread; pyroute2's push/pop keep a per-process stack,
# so serialise users within this process.
_LOCK = threading.RLock()


def _netns() -> ModuleType:
    # pyroute2 costs tens of milliseconds to import: only what touches a namespace pays.
    from pyroute2 import netns

    module: ModuleType = netns
    return module


def exists(name: str) -> bool:
    return name in _netns().listnetns()


def create(name: str) -> bool:
    """Create the namespace if missing; True if this call created it."""
    if exists(name):
        return False
    _netns().create(name)
    return True


def remove(name: str) -> None:
    if exists(name):
        _netns().remove(name)


@contextlib.contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Run the body with this thread in namespace ``name`` (no-op for None)."""
    if not name:
        yield
        return
    with _LOCK:
        _netns().pushns(name)
        try:
            yield
        finally:
            _netns().popns()


def exec_prefix(name: str | None) -> list[str]:
    """argv prefix that starts a program inside the namespace (for QEMU and dnsmasq)."""
    return ["ip", "netns", "exec", name] if name else []
