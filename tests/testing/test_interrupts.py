"""SIGTERM (a CI job's timeout, ``timeout(1)``) while a guest starts or runs: the CLI, the
API's ``with`` and the pytest plugin remove what they started, as on Ctrl-C (fake backend:
host redis-server "guests", which outlive a killed process as real guests do)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import uniklab
from tests.lab.test_signals import guard
from tests.testing import fakes
from tests.testing.conftest import ROOT, store_names
from uniklab.cli.main import main
from uniklab.lab import InstanceView, Lab

pytest_plugins = ["pytester"]

# Replaces Lab.wait_ready: the guest exists, it is not ready yet, and the job is killed.
KILLED_WHILE_WAITING = """
import os, signal, time
from uniklab.lab import Lab

def killed_while_waiting(self, view, m, *, timeout):
    print("started", view.name, view.row.pid, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(200):
        time.sleep(0.05)
    raise AssertionError("SIGTERM did not stop the wait")

Lab.wait_ready = killed_while_waiting
"""


def kill_leftovers(home: Path) -> list[str]:
    """Fake guests still running under ``home`` (killed, so a failure leaks nothing)."""
    left = fakes.redis_servers(str(home))
    for pid in left:
        os.kill(int(pid), signal.SIGKILL)
    return left


# The tests' uniklab and the fakes, whatever the venv's install points at.
PYTHONPATH = os.pathsep.join([str(ROOT), str(Path(uniklab.__file__).resolve().parents[1])])


def python(home: Path, script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UNIKLAB_HOME": str(home), "PYTHONPATH": PYTHONPATH}
    code = "from tests.testing import fakes\nfakes.install()\n" + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, text=True, capture_output=True, timeout=60
    )


def test_cli_run_wait_killed_destroys_what_it_started(
    home: Path,
    fake_backend: fakes.FakeBackend,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started: list[int | None] = []

    def killed_while_waiting(self: Lab, view: InstanceView, m: object, *, timeout: float) -> None:
        started.append(view.row.pid)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):
            time.sleep(0.05)
        raise AssertionError("SIGTERM did not stop the wait")

    monkeypatch.setattr(Lab, "wait_ready", killed_while_waiting)
    try:
        with guard(signal.SIGTERM):
            code = main(["run", "redis", "--wait", "--name", "victim"])
        assert started and started[0], "the guest was running when the signal came"
        assert code == 143
        assert capsys.readouterr().err.strip().splitlines()[-1] == "aborted (SIGTERM)"
        assert store_names(home) == []
        assert not list((home / "run").iterdir())
    finally:
        assert kill_leftovers(home) == []


def test_api_run_killed_while_waiting_cleans_up(
    home: Path, fake_backend: fakes.FakeBackend
) -> None:
    r = python(home, KILLED_WHILE_WAITING + "import uniklab\nuniklab.run('redis')\n")
    try:
        assert "started" in r.stdout
        assert r.returncode != -signal.SIGTERM, "killed without cleaning up"
        assert "KeyboardInterrupt" in r.stderr or "Interrupted" in r.stderr, r.stderr
        assert store_names(home) == []
    finally:
        assert kill_leftovers(home) == []


def test_api_with_block_killed_destroys(home: Path, fake_backend: fakes.FakeBackend) -> None:
    r = python(
        home,
        """
        import os, signal, time, uniklab
        with uniklab.run("redis", name="body") as vm:
            assert vm.redis().ping()
            print("ready", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(200):
                time.sleep(0.05)
        """,
    )
    try:
        assert "ready" in r.stdout, r.stderr
        assert r.returncode != -signal.SIGTERM, "killed without cleaning up"
        assert store_names(home) == []
    finally:
        assert kill_leftovers(home) == []


def test_plugin_session_killed_destroys_its_instances(
    pytester: pytest.Pytester,
    home: Path,
    fake_backend: fakes.FakeBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytester.makeconftest(
        "from tests.testing import fakes\n\ndef pytest_configure(config):\n    fakes.install()\n"
    )
    pytester.makepyfile(
        """
        import os, signal, time

        def test_killed(unikernel):
            vm = unikernel("redis")
            assert vm.redis().ping()
            os.kill(os.getpid(), signal.SIGTERM)  # a CI job's timeout, mid-test
            for _ in range(200):
                time.sleep(0.05)
        """
    )
    monkeypatch.setenv("PYTHONPATH", PYTHONPATH)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    result = pytester.runpytest_subprocess(
        "--uniklab-home", str(home), "-p", "no:cacheprovider", timeout=60
    )
    try:
        assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
        assert store_names(home) == []
    finally:
        assert kill_leftovers(home) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_swallowed_where_it_landed_is_raised_again() -> None:
    """Python ignores an exception raised where it cannot propagate (a ``__del__``, an
    import lock's weakref callback: seen with a SIGTERM during ``run --wait``'s imports);
    the next wait point raises it again, and the scope's end forgets it."""
    from uniklab import signals

    class Dies:
        def __del__(self) -> None:
            signals._raise(signal.SIGTERM, None)  # as the handler does, where it is lost

    with signals.as_interrupts(take_over=True):
        Dies()  # collected at once: its Interrupted is swallowed
        with pytest.raises(signals.Interrupted) as err:
            signals.raise_pending()
        assert err.value.signum == signal.SIGTERM
    signals.raise_pending()  # nothing pending any more
