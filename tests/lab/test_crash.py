"""A command killed half-way (SIGKILL at a crash point) leaves debris that the next
command repairs: no QEMU, tap, bridge, namespace, dnsmasq, staging dir or row survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.leaks import assert_nothing_left, qemu_processes
from uniklab.lab import Lab
from uniklab.net import links, netns
from uniklab.paths import Paths
from uniklab.state.store import RUNNING

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("signal_defaults")]

NS = f"uklcrash{os.getpid() % 10000}"


def _cli(home: Path, *argv: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UNIKLAB_HOME": str(home)}
    if crash:
        env["UNIKLAB_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-m", "uniklab", *argv],
        env=env,
        text=True,
        capture_output=True,
        timeout=180,
    )


def _dnsmasq(home: Path) -> str:
    return subprocess.run(
        ["pgrep", "-f", f"dnsmasq.*{home}"], capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("point", ["run.before_taps", "run.after_taps", "run.after_create"])
def test_killed_run_is_repaired(lab_home: Path, point: str) -> None:
    r = _cli(lab_home, "run", "redis", "--name", "victim", crash=point)
    assert r.returncode == -9, r.stderr
    if point == "run.after_create":
        assert qemu_processes(str(lab_home)), "QEMU should have been running at the crash"
    r = _cli(lab_home, "ps", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert_nothing_left(lab_home)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_run_wait_stopped_by_a_signal_cleans_up(lab_home: Path, sig: signal.Signals) -> None:
    """A CI job's timeout (SIGTERM) or a closed terminal (SIGHUP) while `run --wait` waits
    for the guest: what it started goes, as on Ctrl-C, and it exits 128 + the signal."""
    env = {**os.environ, "UNIKLAB_HOME": str(lab_home)}
    argv = [sys.executable, "-m", "uniklab", "run", "redis", "--wait", "--name", "victim"]
    proc = subprocess.Popen(
        argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    lab = Lab(Paths(lab_home))
    try:
        deadline = time.monotonic() + 60
        # Running (QEMU up, the row says so) and waiting for the probe: a TCG boot takes
        # seconds, so the signal lands before the guest is ready.
        while not any(r.state == RUNNING for r in lab.store.instances()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the guest never started"
            time.sleep(0.05)
        assert qemu_processes(str(lab_home)), "QEMU should be running when the signal comes"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        lab.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert out == "", "killed before it was ready"
    assert f"aborted ({sig.name})" in err
    assert_nothing_left(lab_home)


@pytest.mark.root
@pytest.mark.parametrize("point", ["net.after_netns", "net.after_bridge", "net.after_dnsmasq"])
def test_killed_net_create_is_repaired(lab_home: Path, point: str) -> None:
    r = _cli(
        lab_home,
        "net",
        "create",
        "lab",
        "--subnet",
        "10.79.0.0/24",
        "--bridge",
        "uklcrashbr",
        "--netns",
        NS,
        crash=point,
    )
    assert r.returncode == -9, r.stderr
    assert netns.exists(NS)
    r = _cli(lab_home, "net", "ls", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert not netns.exists(NS)
    assert _dnsmasq(lab_home) == ""


@pytest.mark.root
def test_killed_bridged_run_is_repaired(lab_home: Path) -> None:
    assert (
        _cli(lab_home, "net", "create", "lab", "--subnet", "10.79.0.0/24", "--netns", NS).returncode
        == 0
    )
    r = _cli(lab_home, "run", "redis", "--name", "v", "--net", "lab", crash="run.after_create")
    assert r.returncode == -9
    assert links.taps("ukt", NS), "the tap should exist at the crash"
    assert json.loads(_cli(lab_home, "ps", "--json").stdout) == []
    assert links.taps("ukt", NS) == []
    assert _cli(lab_home, "net", "rm", "lab").returncode == 0
    assert not netns.exists(NS) and _dnsmasq(lab_home) == ""
    assert_nothing_left(lab_home)


def test_killed_bake_leaves_no_half_image(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = Path(f"/tmp/ukl-bake-{os.getpid()}")
    try:
        r = _cli(home, "bake", "redis", crash="bake.after_initrd")
        assert r.returncode == -9
        assert list((home / "images").glob(".tmp-*")), "the staging dir exists at the crash"
        r = _cli(home, "images", "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == []
        assert list((home / "images").iterdir()) == []
        r = _cli(home, "bake", "redis")
        assert r.returncode == 0 and "baked" in r.stdout
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)
