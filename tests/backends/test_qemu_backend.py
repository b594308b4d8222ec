"""The backend contract (tests/backends/contract.py) on the QEMU backend: guests on this
machine under TCG (or KVM where it runs), user-mode networking."""

from __future__ import annotations

import os
import signal

import pytest

from tests.backends.contract import BackendContract, Target
from uniklab import daemons
from uniklab.lab import Lab, RunOptions
from uniklab.state.store import InstanceRow

pytestmark = pytest.mark.e2e


def _kill_qemu(lab: Lab, row: InstanceRow) -> None:
    """SIGKILL, then wait until it is gone (as `xl destroy` returns once the domain is)."""
    assert row.pid
    os.kill(row.pid, signal.SIGKILL)
    assert daemons.wait_gone(row.pid, str(row.runtime["rundir"]), timeout=10)


class TestQemuContract(BackendContract):
    @pytest.fixture
    def target(self, lab: Lab) -> Target:
        return Target(lab, RunOptions(memory="128M"), _kill_qemu)
