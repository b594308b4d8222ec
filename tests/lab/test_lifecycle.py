"""stop, start, restart, pause and resume, for real: a Redis guest under QEMU told to end
(its exit status heard), started again as the same instance, frozen and thawed; and the
refusals of a transition the instance's state does not allow."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from tests.support.cli import cli_json
from tests.support.leaks import assert_nothing_left
from uniklab import api, events
from uniklab.backends.base import InstanceSpec
from uniklab.cli.main import main
from uniklab.errors import NotFoundError, UsageError
from uniklab.lab import Lab, RunOptions
from uniklab.net.attachment import Attachment
from uniklab.state.store import PAUSED, STOPPED


def _client(lab: Lab, name: str, timeout: float = 5) -> redis.Redis:
    return redis.Redis("127.0.0.1", lab.ip(name).ports[0][0], socket_timeout=timeout)


def _row(capsys: pytest.CaptureFixture[str], name: str) -> dict[str, object]:
    rows = cli_json(capsys, "ps", "-a")
    assert isinstance(rows, list)
    [row] = [r for r in rows if r["name"] == name]
    return dict(row)


@pytest.mark.e2e
def test_pause_freezes_the_guest_and_resume_thaws_it(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.run("redis", RunOptions(name="p1", memory="128M"))
    assert main(["pause", "p1"]) == 0
    assert capsys.readouterr().out == "p1\n"
    assert _row(capsys, "p1")["state"] == "paused"
    with pytest.raises(redis.exceptions.TimeoutError):
        _client(lab, "p1", timeout=1.5).ping()
    assert main(["resume", "p1"]) == 0
    assert _row(capsys, "p1")["state"] == "running"
    assert _client(lab, "p1").ping() is True


@pytest.mark.e2e
def test_stop_tells_the_app_and_start_brings_the_same_instance_back(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A restart policy restarts a crash, never a stop.
    lab.run("redis", RunOptions(name="s1", memory="128M", restart="on-failure"))
    before = _row(capsys, "s1")
    _client(lab, "s1").set("k", "v")
    assert main(["stop", "-t", "20", "s1"]) == 0
    assert capsys.readouterr().out == "s1\n"
    stopped = _row(capsys, "s1")
    # Redis exits 0 on SIGTERM: it was told, not killed.
    assert (stopped["state"], stopped["exit_status"]) == ("stopped", 0)
    assert stopped["exit_reason"] == "app exit status 0"
    logs = lab.logs("s1")
    assert "uniklab-init: stop requested: SIGTERM to the app" in logs
    assert "uniklab-init: app exited status 0" in logs
    assert lab.ps()[0].state == STOPPED  # reconcile leaves it stopped, not crashed
    with pytest.raises(UsageError, match="cannot pause s1: it is stopped"):
        lab.pause("s1")

    assert main(["start", "s1"]) == 0
    again = _row(capsys, "s1")
    assert again["state"] == "running" and again["exit_status"] is None
    assert (again["mac"], again["ports"]) == (before["mac"], before["ports"])
    r = _client(lab, "s1")
    assert r.ping() is True and r.get("k") is None  # a new boot: memory is not kept
    with pytest.raises(UsageError, match="cannot start s1: it is running"):
        lab.start("s1")
    said = [(e.event, e.name) for e in events.read(lab.paths, names=["s1"])]
    assert ("stopped", "s1") in said and ("started", "s1") in said

    lab.stop("s1", timeout=5)
    lab.destroy("s1")  # a stopped instance is destroyed like any other
    assert_nothing_left(lab_home)


@pytest.mark.e2e
def test_a_guest_still_booting_hears_the_stop(lab: Lab) -> None:
    """What reaches the UART before the guest's driver is up is lost: the host says it
    again until the init answers."""
    lab.run("redis", RunOptions(name="b1", memory="128M", wait=False))
    view = lab.stop("b1", timeout=20)
    # The app was told (SIGTERM, maybe before Redis set its handler: 128+15), not killed.
    assert view.row.runtime["exit_status"] in (0, 143), lab.logs("b1")[-2000:]


@pytest.mark.e2e
def test_restart_and_the_api(lab: Lab, lab_home: Path) -> None:
    with api.run("redis", name="a1", memory="128M", home=lab_home) as vm:
        vm.pause()
        assert vm.state == PAUSED
        vm.resume()
        vm.restart(timeout=5)
        assert vm.state == "running" and vm.redis().ping()
        assert vm.stop() == 0
        assert vm.state == STOPPED
        vm.start()
        assert vm.redis().ping()


def test_a_transition_the_state_does_not_allow_changes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = Lab()
    try:
        row = lab.store.reserve(
            name="x1", image="redis:latest", digest="sha256:00", backend="qemu", host="local",
            memory_mb=64, vcpus=1, owner_pid=None, spec={}, labels={},
        )  # fmt: skip
        lab.store.update(row.id, state=STOPPED)
        for verb in ("pause", "resume", "stop"):
            with pytest.raises(UsageError, match=f"cannot {verb} x1: it is stopped"):
                getattr(lab, verb)("x1")
        with pytest.raises(UsageError, match="cannot start x1: it has no launch record"):
            lab.start("x1")
        with pytest.raises(NotFoundError):
            lab.stop("nope")
        with pytest.raises(UsageError, match="invalid stop timeout"):
            lab.stop("x1", timeout=-1)
        assert lab.store.instance("x1").state == STOPPED
    finally:
        lab.close()
    capsys.readouterr()
    assert main(["pause", "x1"]) == 2
    assert main(["resume", "nope"]) == 3
    err = capsys.readouterr().err
    assert "cannot pause x1: it is stopped (only running)" in err and len(err.splitlines()) == 2
    assert main(["stop", "-t", "-1", "x1"]) == 2  # click refuses it


def test_start_replaces_only_a_published_port_taken_meanwhile(home: Path) -> None:
    lab = Lab()
    try:
        row = lab.store.reserve(
            name="x1", image="redis:latest", digest="sha256:00", backend="qemu", host="local",
            memory_mb=64, vcpus=1, owner_pid=None, spec={}, labels={},
        )  # fmt: skip
        with socket.socket() as taken, socket.socket() as free:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            free.bind(("127.0.0.1", 0))
            busy, kept = taken.getsockname()[1], free.getsockname()[1]
            free.close()  # free again, as a stopped guest's port is
            nic = Attachment("user", "52:54:00:00:00:01", forwards=((busy, 6379), (kept, 80)))
            spec = InstanceSpec("x1", Path("/k"), None, "", 64, 1, Path("/r"), nics=(nic,))
            [again] = lab._with_free_ports(lab.store.instance("x1"), spec).nics
        [(new, g1), (same, g2)] = again.forwards
        assert (g1, same, g2) == (6379, kept, 80) and new != busy
        assert again.mac == nic.mac
        assert lab.store.instance_by_id(row.id).spec["publish"] == [[new, 6379], [kept, 80]]
    finally:
        lab.close()
