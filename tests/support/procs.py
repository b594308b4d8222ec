"""Stand-in processes for guests: ``uniklab`` finds a guest's process by its command line,
which a child has only once it has exec'd (just forked, it is still the test's python)."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for_exec(pid: int, marker: str, timeout: float = 10.0) -> None:
    """Until process ``pid``'s command line carries ``marker`` (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
        assert time.monotonic() < deadline, f"pid {pid} did not exec in {timeout}s"
        time.sleep(0.005)
