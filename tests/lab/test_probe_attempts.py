"""How long one attempt of ``probes.wait`` may take: short on an address (a forwarder that
accepts early must not hold readiness back), long enough on a channel for its replies; and
what it says of a guest that stops first."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.lab.test_lab_pure import RUMP_PANIC
from uniklab.errors import ProbeTimeoutError
from uniklab.lab import last_word
from uniklab.probes import base


class _Slow:
    """A probe that fails its first attempt and records each attempt's timeout."""

    name = "slow"

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def attempt(self, endpoint: base.Endpoint, timeout: float) -> str:
        self.timeouts.append(timeout)
        if len(self.timeouts) == 1:
            raise TimeoutError("not yet")
        return "ok"


def test_an_attempt_on_an_address_is_short() -> None:
    probe = _Slow()
    base.wait(probe, lambda: base.Endpoint("127.0.0.1", 1), timeout=60, interval=0)
    assert probe.timeouts == [base.ATTEMPT, base.ATTEMPT]


def test_an_attempt_on_a_channel_waits_for_its_replies() -> None:
    probe = _Slow()
    channel = base.Endpoint("127.0.0.1", None, path="/run/x/chan-6379.sock")
    base.wait(probe, lambda: channel, timeout=60, interval=0)
    assert probe.timeouts == [base.CHANNEL_ATTEMPT, base.CHANNEL_ATTEMPT]
    assert base.CHANNEL_ATTEMPT > base.ATTEMPT


def test_no_attempt_outlasts_the_deadline() -> None:
    probe = _Slow()
    channel = base.Endpoint("127.0.0.1", None, path="/run/x/chan-6379.sock")
    base.wait(probe, lambda: channel, timeout=3, interval=0)
    assert all(t <= 3 for t in probe.timeouts)


def test_an_endpoint_not_known_yet_is_asked_again() -> None:
    """A bridged guest's address comes by DHCP: until then the endpoint raises, and the
    wait goes on rather than fail the run."""
    from uniklab.errors import NotFoundError

    asked = []

    def endpoint() -> base.Endpoint:
        asked.append(1)
        if len(asked) < 3:
            raise NotFoundError("g: address of 52:54:00:00:00:01 not known yet")
        return base.Endpoint("127.0.0.1", 1)

    probe = _Slow()
    probe.timeouts.append(0.0)  # its next attempt succeeds
    assert base.wait(probe, endpoint, timeout=60, interval=0).ok
    assert len(asked) == 3


def _stopped(why: str) -> ProbeTimeoutError:
    """What ``wait`` raises for a guest that is dead at its first failed attempt, its
    console's last word being ``why``."""
    with pytest.raises(ProbeTimeoutError) as err:
        base.wait(
            _Slow(),
            lambda: base.Endpoint("127.0.0.1", 1),
            timeout=60,
            alive=lambda: False,
            why_stopped=lambda: why,
        )
    return err.value


def test_a_guest_that_stops_is_named_with_its_last_word() -> None:
    assert str(_stopped("panic: kernel diagnostic assertion failed")) == (
        "slow probe: the guest stopped before it was ready"
        " (panic: kernel diagnostic assertion failed) (last error: TimeoutError: not yet)"
    )
    assert str(_stopped("")) == (
        "slow probe: the guest stopped before it was ready (last error: TimeoutError: not yet)"
    )


def test_the_one_rerun_matches_the_known_panic_as_words_it_and_no_other() -> None:
    """pyproject's ``only_rerun`` (one rerun for a known upstream panic) against the error
    a probe raises for it, from the console CI recorded; another panic is not rerun."""
    doc = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    [pattern] = doc["tool"]["pytest"]["ini_options"]["only_rerun"]

    def error(console: str) -> str:
        exc = _stopped(last_word(console))
        return f"{type(exc).__name__}: {exc}"  # what the rerun plugin matches

    assert re.search(pattern, error(RUMP_PANIC))
    other = RUMP_PANIC.replace("mutex_owned(&fdp->fd_lock)", "kn->kn_fop != NULL")
    assert not re.search(pattern, error(other))
    assert not re.search(pattern, error("uniklab-init: app exited status 1\n"))
