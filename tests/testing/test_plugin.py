"""The pytest plugin, tested with pytest's own ``pytester``: inner sessions use the fake
backend (host redis-server "guests") except one real boot, marked e2e."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.testing import fakes
from tests.testing.conftest import ROOT, store_names
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths
from uniklab.testing import session as owner

pytest_plugins = ["pytester"]

INNER_CONFTEST = """
from tests.testing import fakes

def pytest_configure(config):
    fakes.install()

def pytest_unconfigure(config):
    fakes.uninstall()
"""


@pytest.fixture
def inner(
    pytester: pytest.Pytester, home: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode:
        pytest.skip("redis-server not installed")
    pytester.makeconftest(INNER_CONFTEST)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    return pytester


def run(pytester: pytest.Pytester, home: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest("--uniklab-home", str(home), "-p", "no:cacheprovider", *args)


def test_passing_tests_get_ready_instances_baked_once(inner: pytest.Pytester, home: Path) -> None:
    inner.makepyfile(
        """
        def test_one(unikernel, uniklab_session):
            vm = unikernel("redis", memory="128M")
            r = vm.redis()
            assert r.set("k", "v") and r.get("k") == b"v"
            assert vm.name.startswith(f"redis-main-{uniklab_session.id}-")
            assert vm.labels["uniklab.session"] == uniklab_session.id
            assert vm.labels["uniklab.test"].endswith("test_one")
            assert vm.stats().memory_mb == 128

        def test_two(unikernel):
            a, b = unikernel("redis"), unikernel("redis", env={"X": "1"})
            assert a.name != b.name and a.port(6379) != b.port(6379)
        """
    )
    result = run(inner, home)
    result.assert_outcomes(passed=2)
    assert fakes.BAKES == ["redis"], "baked once per session"
    assert store_names(home) == []
    assert fakes.redis_servers(str(home)) == []


def test_failure_attaches_console_and_destroys(inner: pytest.Pytester, home: Path) -> None:
    inner.makepyfile(
        """
        def test_fails(unikernel):
            vm = unikernel("redis", memory="128M")
            vm.redis().set("k", "v")
            assert vm.redis().get("k") == b"other"

        def test_raises_after_two(unikernel):
            unikernel("redis")
            unikernel("redis")
            raise RuntimeError("boom")
        """
    )
    result = run(inner, home, "--junitxml", str(home / "j.xml"))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*uniklab console redis-main-*-1 (call)*",
            "fake-guest: booting",
            "*uniklab console redis-main-*-2 (call)*",
            "*uniklab console redis-main-*-3 (call)*",
        ]
    )
    assert store_names(home) == []
    assert fakes.redis_servers(str(home)) == []


def test_keep_keeps_failed_instances_from_the_reaper(inner: pytest.Pytester, home: Path) -> None:
    inner.makepyfile(
        """
        def test_passes(unikernel):
            unikernel("redis")

        def test_fails(unikernel):
            unikernel("redis")
            assert False
        """
    )
    result = run(inner, home, "--uniklab-keep")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["uniklab: kept 1 instance(s) of failed tests: redis-main-*-2 *"])
    [kept] = store_names(home)
    # the next session (its owner pid is dead by then... here: alive) must not reap it
    inner.makepyfile(test_other="def test_nothing():\n    pass\n")
    run(inner, home, "test_other.py").assert_outcomes(passed=1)
    assert store_names(home) == [kept]
    fakes.install()
    try:
        lab = Lab(Paths(home))
        assert lab.store.instance(kept).labels[owner.KEEP] == "1"
        lab.destroy(kept)
        lab.close()
    finally:
        fakes.uninstall()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_crashed_session_are_reaped(
    inner: pytest.Pytester, home: Path, fake_backend: fakes.FakeBackend
) -> None:
    lab = Lab(Paths(home))
    dead = {owner.SESSION: "crashed", owner.PID: str(_dead_pid())}
    lab.run("redis", RunOptions(name="leftover", labels=dead))
    # a pid that lives but is another process (reused pid): also a leftover
    reused = {**owner.owner_labels("reused"), owner.PIDSTART: "1"}
    lab.run("redis", RunOptions(name="reused", labels=reused))
    lab.run("redis", RunOptions(name="alive", labels=owner.owner_labels("live")))
    lab.run("redis", RunOptions(name="unlabelled"))
    inner.makepyfile("def test_nothing():\n    pass\n")
    result = run(inner, home)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["uniklab: reaped 2 leftover instance(s) *: leftover, reused"])
    assert sorted(store_names(home)) == ["alive", "unlabelled"]
    for name in ("alive", "unlabelled"):
        lab.destroy(name)
    lab.close()
    assert fakes.redis_servers(str(home)) == []


def test_skipped_when_no_backend(
    inner: pytest.Pytester, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-system-x86_64 on it
    inner.makepyfile(
        """
        import pytest

        def test_fixture(unikernel):
            unikernel("redis")

        @pytest.mark.uniklab
        def test_marked():
            pass

        def test_plain():
            pass
        """
    )
    result = run(inner, home, "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*uniklab: qemu-system-x86_64 not found*"])


def test_unknown_backend_is_a_usage_error(inner: pytest.Pytester, home: Path) -> None:
    inner.makepyfile("def test_nothing():\n    pass\n")
    result = run(inner, home, "--uniklab-backend", "vmware")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--uniklab-backend 'vmware': available: qemu*"])


def test_xdist_names_are_unique_per_worker(
    inner: pytest.Pytester, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    out = tmp_path / "names"
    out.mkdir()
    monkeypatch.setenv("NAMES_DIR", str(out))
    inner.makepyfile(
        """
        import os, pathlib, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_name(unikernel, i):
            vm = unikernel("redis")
            assert vm.redis().ping()
            pathlib.Path(os.environ["NAMES_DIR"], vm.name).touch()
        """
    )
    result = inner.runpytest_subprocess(
        "--uniklab-home", str(home), "-p", "no:cacheprovider", "-n", "2"
    )
    result.assert_outcomes(passed=4)
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4
    workers = {n.split("-")[1] for n in names}
    assert workers == {"gw0", "gw1"}, names
    assert store_names(home) == []


@pytest.mark.e2e
def test_real_guests(pytester: pytest.Pytester, home: Path) -> None:
    """Passing and failing tests on real QEMU guests: clones of one template (one TCG
    boot), and a guest that boots (``boot=True``)."""
    pytester.makepyfile(
        """
        def test_ok(unikernel):
            vm = unikernel("redis", memory="128M")
            assert vm.redis().ping()
            assert vm.stats().state == "running"
            assert vm.clone_of is not None

        def test_fails(unikernel):
            vm = unikernel("redis", memory="128M")
            assert vm.redis().dbsize() == 1

        def test_boots(unikernel):
            vm = unikernel("redis", memory="128M", boot=True)
            assert vm.redis().ping() and vm.clone_of is None
        """
    )
    result = run(pytester, home)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*uniklab console redis-main-*-2 (call)*", "*uniklab-init: exec /bin/redis-server*"]
    )
    assert store_names(home) == []
    ps = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    assert str(home) not in ps.stdout


def test_a_host_pool_places_guests_that_name_no_host(inner: pytest.Pytester, home: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # a dead dom0: skipped with one line
    lab = Lab(Paths(home))
    lab.hosts.add(name="gone", ssh="root@127.0.0.1", port=closed)
    lab.close()
    inner.makepyfile(
        """
        def test_placed(unikernel):
            vm = unikernel("redis")
            assert vm.reload().row.host == "local"
        """
    )
    result = run(inner, home, "--uniklab-hosts", "gone,local", "--log-cli-level=WARNING")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*host gone skipped: *"])
    result = run(inner, home, "--uniklab-hosts", "gone,gone")
    result.stderr.fnmatch_lines(["*--uniklab-hosts: host pool 'gone,gone,' names a host twice*"])
