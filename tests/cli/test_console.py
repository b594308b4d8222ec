"""`uniklab logs -f` and `uniklab console` on a real QEMU guest, and `vm.logs(follow=True)`.

What the guest says on its console once it is up comes from the serial line itself: a
line written to the console socket is echoed by the guest's tty (the init keeps the
console open, in the kernel's default cooked mode), and QEMU logs the echo as any other
output.  The CLI runs as a subprocess (it is followed while the test acts on the guest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.terminal import Terminal
from uniklab import consoles
from uniklab.api import Client
from uniklab.lab import Lab, RunOptions

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("signal_defaults"),
    pytest.mark.timeout(300),  # bounds a follow that never sees what it waits for
]

BOUND = 60.0  # seconds any wait here may take (a TCG guest on a busy machine)
READY = "Ready to accept connections"  # what Redis says once up


@pytest.fixture
def guest(lab: Lab) -> Iterator[str]:
    lab.run("redis", RunOptions(name="con1"))
    yield "con1"


def _uniklab(home: Path, *argv: str, **kwargs: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "UNIKLAB_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "uniklab", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )


def _read_until(proc: subprocess.Popen[bytes], want: bytes) -> bytes:
    """What ``proc`` printed up to and with ``want`` (bounded)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + BOUND
    while want not in seen:
        assert time.monotonic() < deadline, f"never printed {want!r}: {seen[-500:]!r}"
        data = os.read(proc.stdout.fileno(), 4096)  # follow prints as it comes
        assert data, f"ended before printing {want!r}: {seen[-500:]!r}"
        seen += data
    return seen


def _say(rundir: Path, line: bytes) -> None:
    """A line typed on the guest's serial console (the guest's tty echoes it)."""
    with consoles.connect(rundir / "console.sock") as sock:
        sock.sendall(line + b"\n")
        time.sleep(0.2)  # QEMU hands the bytes to the UART before the connection goes


def _rundir(lab: Lab, name: str) -> Path:
    return Path(str(lab.get(name).row.runtime["rundir"]))


def test_logs_follow_prints_new_output_and_ends_with_the_guest(
    lab: Lab, lab_home: Path, guest: str
) -> None:
    rundir = _rundir(lab, guest)
    follower = _uniklab(lab_home, "logs", "-f", guest)
    stopped = _uniklab(lab_home, "logs", "--follow", "-n", "2", guest)
    try:
        assert b"uniklab-init: exec" in _read_until(follower, READY.encode())
        _read_until(stopped, READY.encode())
        _say(rundir, b"marker-while-followed")
        _read_until(follower, b"marker-while-followed\n")
        # Ctrl-C: the reader is done, exit 0.
        stopped.send_signal(signal.SIGINT)
        assert stopped.wait(BOUND) == 0
        # Destroyed: the follower ends by itself, exit 0, and says why on stderr.
        lab.destroy(guest)
        _out, err = follower.communicate(timeout=BOUND)
        assert follower.returncode == 0, err
        assert err.decode().strip().splitlines()[-1] == f"{guest}: console ended (destroyed)"
    finally:
        for p in (follower, stopped):
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_logs_tail_and_follow_from_now(lab: Lab, lab_home: Path, guest: str) -> None:
    last = subprocess.run(
        [sys.executable, "-m", "uniklab", "logs", "-n", "1", guest],
        env={**os.environ, "UNIKLAB_HOME": str(lab_home)},
        capture_output=True,
        timeout=BOUND,
    )
    assert last.returncode == 0 and last.stdout.count(b"\n") == 1, last
    assert READY.encode() in last.stdout
    nothing = subprocess.run(
        [sys.executable, "-m", "uniklab", "logs", "-n", "0", guest],
        env={**os.environ, "UNIKLAB_HOME": str(lab_home)},
        capture_output=True,
        timeout=BOUND,
    )
    assert nothing.returncode == 0 and nothing.stdout == b""


def test_console_through_a_pipe(lab: Lab, lab_home: Path, guest: str) -> None:
    env = {**os.environ, "UNIKLAB_HOME": str(lab_home)}
    argv = [sys.executable, "-m", "uniklab", "console", guest]
    # Input reaches the guest (its tty echoes it); stdin's end, then quiet, ends it: exit 0.
    r = subprocess.run(argv, env=env, input=b"typed-into-console\n", capture_output=True,
                       timeout=BOUND)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode().splitlines()[0] == f"Connected to {guest} (escape character is ^])"
    assert b"typed-into-console\r\n" in r.stdout
    assert "typed-into-console" in lab.logs(guest)
    # Ctrl-] detaches at once: what came before it is sent, nothing after it.
    r = subprocess.run(argv, env=env, input=b"before-escape\n\x1dafter-escape\n",
                       capture_output=True, timeout=BOUND)  # fmt: skip
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + BOUND
    while "before-escape" not in lab.logs(guest):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "after-escape" not in lab.logs(guest)


def test_console_taken_by_another_client(lab: Lab, lab_home: Path, guest: str) -> None:
    env = {**os.environ, "UNIKLAB_HOME": str(lab_home)}
    with consoles.connect(_rundir(lab, guest) / "console.sock"):
        time.sleep(0.2)  # QEMU has accepted it
        r = subprocess.run([sys.executable, "-m", "uniklab", "console", guest], env=env,
                           input=b"", capture_output=True, timeout=BOUND)  # fmt: skip
    assert r.returncode == 4, r.stderr
    err = r.stderr.decode().strip()
    assert "in use by another client" in err and len(err.splitlines()) == 1


def test_api_logs_follow(lab_home: Path, guest: str) -> None:
    client = Client(lab_home)
    try:
        vm = client.get(guest)
        assert READY in vm.logs(tail=1)
        lines = vm.logs(follow=True, tail=0)
        _say(_rundir(client.lab, guest), b"api-marker")
        for line in lines:
            if line == "api-marker":
                break
        lines.close()
        every = vm.logs(follow=True)
        assert next(every).startswith(vm.logs().splitlines()[0])
        every.close()
    finally:
        client.close()


def test_console_on_a_terminal(lab_home: Path, guest: str) -> None:
    """Raw mode on a real terminal (a pty): keys go through as typed, the guest's tty
    echoes them, Ctrl-] detaches with exit 0 and the terminal is as it was."""
    argv = [sys.executable, "-m", "uniklab", "console", guest]
    with Terminal(argv, bound=BOUND) as term:
        term.expect(b"escape character is ^]")
        term.wait_raw()  # what is typed now is not echoed by this terminal
        term.type(b"on-a-tty\r")  # Enter is CR in raw mode; the guest's tty maps it
        term.expect(b"on-a-tty\r\n")
        term.type(b"\x1d")
        assert term.wait() == 0
        assert term.restored()
