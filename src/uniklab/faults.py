"""Crash points for fault-injection tests: ``UNIKLAB_CRASH_AT=<name>`` kills the process
with SIGKILL when it reaches that point, as a user's kill -9 or a power cut would.

The points sit between the steps of multi-step commands (run, net create, bake), so tests
can prove that the next command repairs whatever a killed one left half-done.
"""

from __future__ import annotations

import os
import signal

ENV = "UNIKLAB_CRASH_AT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
