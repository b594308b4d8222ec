"""What went wrong inside a virtual Xen host while its module ran, said at the end of the
run, passed or failed: daemons the dom0's init had to start again, and the kernel's lines
about processes that died of a fault (segfault, trap, OOM).  A lab whose dom0 crashes now
and then under TCG still passes when its daemons come back; this keeps such crashes seen,
and says where they were (the faulting address and library).  A test that kills a
daemon on purpose says so in the init's log, and that line is shown too."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from tests.support import run_end

# The kernel's fault lines, and what the dom0's init logs of its daemons.
_FAULTS = re.compile(
    r"segfault at|traps:|general protection|invalid opcode|Out of memory|Killed process|"
    r"is gone: starting it again|FAILED|on purpose"
)
FOUND: list[str] = []


def collect(home: Path, name: str) -> None:
    """The lab ``name`` of ``home``'s faults and restarts, kept for the end of the run."""
    from uniklab.bake.dom0 import INIT_LOG
    from uniklab.lab import Lab
    from uniklab.paths import Paths

    lab = Lab(Paths(home))
    try:
        ex = lab.hosts.executor(lab.hosts.get(name))
        r = ex.run(["sh", "-c", f"cat {INIT_LOG}; dmesg"], timeout=60, check=False)
        FOUND.extend(f"{name}: {ln}" for ln in r.stdout.splitlines() if _FAULTS.search(ln))
    except Exception as exc:  # the report must not fail the run it reports on
        FOUND.append(f"{name}: its dom0 did not answer at the end: {exc}"[:300])
    finally:
        with contextlib.suppress(Exception):
            lab.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    run_end.say(config, "virtual Xen hosts: faults and restarts in their dom0s", FOUND)
