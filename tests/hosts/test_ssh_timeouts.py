"""A remote command's timeout holds on the host too: past it the command is gone there, the
caller gets one clear line, and a host that stops answering mid-command cannot stall it.

The "remote host" is this machine (the real sshd of tests/support/sshd.py), so what runs
there can be seen in /proc.  It has coreutils' timeout; the sh watchdog that hosts without
it get (the lab's dom0) is run here directly, under dash and bash."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.sshd import SshServer
from uniklab.errors import CommandError, HostUnreachableError
from uniklab.hosts.inventory import Host
from uniklab.hosts.ssh import LOCAL_GRACE, REMOTE_KILL_AFTER, SshExecutor, bounded

pytestmark = pytest.mark.root


def _host(s: SshServer, identity: Path | None = None) -> Host:
    return Host(
        name="box",
        ssh="root@127.0.0.1",
        port=s.port,
        identity=str(identity or s.identity),
        known_hosts=str(s.known_hosts),
    )


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _pids(*argv: str, exact: bool = True) -> list[int]:
    """Processes whose command line is ``argv`` (or, not exact, contains it)."""
    want = list(argv)
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmd = _cmdline(int(entry))
            if cmd == want or (
                not exact and any(cmd[i : i + len(want)] == want for i in range(len(cmd)))
            ):
                out.append(int(entry))
    return out


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _wait_for(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture
def ex(sshd: SshServer) -> Iterator[SshExecutor]:
    executor = SshExecutor(_host(sshd))
    executor.run(["true"])  # the shared connection is up: figures measure the commands
    yield executor
    executor.close()


def test_remote_command_is_stopped_at_its_timeout(ex: SshExecutor) -> None:
    start = time.monotonic()
    with pytest.raises(HostUnreachableError) as err:
        ex.run(["sleep", "299.123"], timeout=2)
    took = time.monotonic() - start
    assert str(err.value) == "box: sleep did not finish within 2s (stopped on the host)"
    # The host's own verdict, well before the local ssh would have been killed.
    assert 2 <= took < 2 + LOCAL_GRACE
    assert _pids("sleep", "299.123") == []
    print(f"remote sleep 300 with timeout 2s: error after {took:.2f}s, nothing left")


def test_a_command_that_ignores_sigterm_is_killed(ex: SshExecutor) -> None:
    spin = ["sh", "-c", "trap '' TERM; while :; do :; done", "ukl-spin-298"]
    start = time.monotonic()
    with pytest.raises(HostUnreachableError, match="did not finish within 1s"):
        ex.run(spin, timeout=1)
    took = time.monotonic() - start
    assert 1 + REMOTE_KILL_AFTER <= took < 1 + LOCAL_GRACE
    assert _pids("ukl-spin-298", exact=False) == []
    print(f"TERM-proof command with timeout 1s: killed, error after {took:.2f}s")


def test_a_finished_command_leaves_no_watchdog(ex: SshExecutor) -> None:
    assert ex.run(["cat"], input="a\nb\0c", timeout=397).stdout == "a\nb\0c"
    # The watchdog notices within a second that its command is gone.
    assert _wait_for(lambda: _pids("uniklab-timeout", "397", exact=False) == [], 3.0)
    assert ex.run(["sh", "-c", "exit 124"], check=False, timeout=397).returncode == 124
    # A command killed by a signal is a failed command, not an unreachable host.
    with pytest.raises(CommandError) as err:
        ex.run(["sh", "-c", 'kill -TERM "$$"'])
    assert err.value.returncode == 128 + signal.SIGTERM


def test_exit_255_of_the_command_is_not_a_lost_host(ex: SshExecutor) -> None:
    # ssh exits 255 when its connection fails, and so does `xl` when it fails: the host
    # answered, so this is the command's failure, with its own stderr and nothing else.
    with pytest.raises(CommandError) as err:
        ex.run(["sh", "-c", "echo 'libxl: no such domain' >&2; exit 255"])
    assert (err.value.returncode, err.value.stderr) == (255, "libxl: no such domain\n")
    r = ex.run(["sh", "-c", "echo out; echo warn >&2"])
    assert (r.stdout, r.stderr) == ("out\n", "warn\n")


def test_a_command_that_never_reached_the_host_is_sent_again(
    ex: SshExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shared connection that is closing as a command joins it fails that command with
    # ssh's 255 before it starts on the host (no start mark): it goes again, once.
    from uniklab.executor import Result, local

    real = local.run
    calls: list[int] = []

    def flaky(argv: list[str], **kw: object) -> Result:
        calls.append(1)
        if len(calls) == 1:
            return Result(argv, 255, "", "mux_client_request_session: read from master failed\n")
        return real(argv, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(local, "run", flaky)
    assert ex.run(["echo", "hi"]).stdout == "hi\n" and len(calls) == 2


def test_a_connection_refused_twice_is_an_unreachable_host(sshd: SshServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    ex = SshExecutor(
        Host(name="gone", ssh="root@127.0.0.1", port=port, identity=str(sshd.identity))
    )
    with pytest.raises(HostUnreachableError, match=r"^gone: ssh failed: .*refused"):
        ex.run(["true"], timeout=5)


def test_host_that_stops_answering_mid_command(sshd: SshServer, tmp_path: Path) -> None:
    # A key file of its own gives this test its own connection (and sshd session) to stop.
    identity = tmp_path / "id"
    shutil.copy(sshd.identity, identity)
    identity.chmod(0o600)
    ex = SshExecutor(_host(sshd, identity))
    ex.run(["true"])
    stopped: list[int] = []
    try:
        with ThreadPoolExecutor(1) as pool:
            start = time.monotonic()
            future = pool.submit(ex.run, ["sleep", "299.456"], timeout=3)
            assert _wait_for(lambda: _pids("sleep", "299.456"), 10.0)
            [pid] = _pids("sleep", "299.456")
            # Freeze the sshd process that carries this session: the host stays up, the
            # connection goes quiet.
            session = _ppid(_ppid(pid))
            while not _cmdline(session)[0].startswith("sshd:"):
                session = _ppid(session)
            os.kill(session, signal.SIGSTOP)
            stopped.append(session)
            with pytest.raises(HostUnreachableError) as err:
                future.result(timeout=30)
            took = time.monotonic() - start
        assert str(err.value) == (
            "box: sleep did not finish within 3s (the host stopped answering)"
        )
        assert took < 3 + LOCAL_GRACE + 2
        # The host's watchdog ended the command although nobody could hear about it.
        assert _pids("sleep", "299.456") == []
        print(f"host stopped answering, timeout 3s: error after {took:.2f}s, nothing left")
    finally:
        for session in stopped:
            os.kill(session, signal.SIGCONT)
        for pid in _pids("sleep", "299.456"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ex.close()


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_watchdog_without_coreutils_timeout(shell: str, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"  # a host with sh, sleep and cat, and no timeout
    bindir.mkdir()
    for name, target in (("sh", shell), ("sleep", "sleep"), ("cat", "cat")):
        found = shutil.which(target)
        assert found is not None
        (bindir / name).symlink_to(found)

    def run(argv: list[str], timeout: float, stdin: str = "") -> tuple[int, str, str, float]:
        start = time.monotonic()
        r = subprocess.run(
            bounded(argv, timeout),
            env={"PATH": str(bindir)},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return r.returncode, r.stdout, r.stderr, time.monotonic() - start

    rc, _, err, took = run(["sleep", "299.789"], 1)
    assert (rc, err) == (124, "uniklab-started\nuniklab-timeout: stopped after 1s\n")
    assert 1 <= took < 2
    assert _pids("sleep", "299.789") == []
    spin = ["sh", "-c", "trap '' TERM; while :; do :; done", "ukl-spin-297"]
    rc, _, err, took = run(spin, 1)
    assert rc == 124 and 1 + REMOTE_KILL_AFTER <= took < 1 + REMOTE_KILL_AFTER + 1
    assert _pids("ukl-spin-297", exact=False) == []
    assert run(["cat"], 7, stdin="a\nb")[:3] == (0, "a\nb", "uniklab-started\n")
    oops = run(["sh", "-c", "echo oops >&2; exit 124"], 7)[:3]
    assert oops == (124, "", "uniklab-started\noops\n")
    # A command's own 255 is marked (ssh's own is not): a failed `xl`, not a lost host.
    own = run(["sh", "-c", "exit 255"], 7)[:3]
    assert own == (255, "", "uniklab-started\nuniklab-exit: 255\n")
    assert _wait_for(lambda: _pids("uniklab-timeout", "7", exact=False) == [], 3.0)
