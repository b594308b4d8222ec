"""The Python API: fast tests on the fake backend, and one real boot (e2e)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import uniklab
from tests.testing import fakes
from tests.testing.conftest import store_names


def test_run_with_destroys_and_destroy_is_idempotent(
    home: Path, fake_backend: fakes.FakeBackend
) -> None:
    with uniklab.run("redis", name="api1", memory="128M", labels={"team": "a"}) as vm:
        assert isinstance(vm, uniklab.Instance)
        assert vm.address == "127.0.0.1"
        assert vm.endpoint(6379) == ("127.0.0.1", vm.port(6379))
        assert vm.redis().ping() is True
        assert "uniklab-init: exec" in vm.logs()
        stats = vm.stats()
        assert (stats.state, stats.memory_mb, stats.vcpus) == ("running", 128, 1)
        assert stats.uptime is not None and stats.rss_bytes is not None
        assert vm.check().startswith("PONG")
        assert [i.name for i in uniklab.ps(labels={"team": "a"})] == ["api1"]
        assert uniklab.ps(labels={"team": "b"}) == []
        with pytest.raises(uniklab.NotFoundError, match="does not publish port 80"):
            vm.port(80)
    assert vm.destroyed and vm.state == "destroyed"
    vm.destroy()  # twice: nothing happens
    with pytest.raises(uniklab.NotFoundError, match="was destroyed"):
        vm.logs()
    assert store_names(home) == []
    assert fakes.redis_servers(str(home)) == []


def test_ctrl_c_in_the_body_destroys(home: Path, fake_backend: fakes.FakeBackend) -> None:
    with pytest.raises(KeyboardInterrupt), uniklab.run("redis") as vm:
        raise KeyboardInterrupt
    assert vm.destroyed
    assert store_names(home) == []


def test_failed_start_cleans_up(home: Path, fake_backend: fakes.FakeBackend) -> None:
    # The fake's redis listens where guest port 6380 is published; the probe wants 6379.
    with pytest.raises(uniklab.ProbeTimeoutError) as err:
        uniklab.run("redis", publish=[(0, 6380)], timeout=1)
    assert isinstance(err.value, uniklab.UniklabError)
    assert "fake-guest: booting" in err.value.console_tail
    assert store_names(home) == []
    assert fakes.redis_servers(str(home)) == []


def test_verbs(home: Path, fake_backend: fakes.FakeBackend) -> None:
    image = uniklab.bake("redis")
    assert image.ref == "redis:latest" and image.ports == (6379,)
    assert [i.ref for i in uniklab.images()] == ["redis:latest"]
    with uniklab.Client(home) as client:
        vm = client.run("redis", name="v1")
        assert client.get("v1").port(6379) == vm.port(6379)
    uniklab.destroy("v1")
    with pytest.raises(uniklab.NotFoundError):
        uniklab.destroy("v1")
    with pytest.raises(uniklab.UsageError):
        uniklab.run("redis", args="--port 1")  # type: ignore[arg-type]
    with pytest.raises(uniklab.UsageError):
        uniklab.run("redis", memory="lots")
    with pytest.raises(uniklab.NotFoundError):
        uniklab.run("nosuch:1.0")
    assert store_names(home) == []


@pytest.mark.e2e
def test_real_guest(home: Path) -> None:
    with uniklab.run("redis", memory="128M") as vm:
        r = vm.redis()
        assert r.set("foo", "bar") and r.get("foo") == b"bar"
        stats = vm.stats()
        assert stats.state == "running" and stats.cpu_seconds and stats.memory_mb == 128
        assert "uniklab-init: exec /bin/redis-server" in vm.logs()
    vm.destroy()
    assert store_names(home) == []
    ps = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    assert str(home) not in ps.stdout


def test_public_names() -> None:
    import uniklab.bake.recipe  # the subpackage of the same name must not shadow the verb

    assert callable(uniklab.bake) and uniklab.bake.__module__ == "uniklab"
    for name in uniklab.__all__:
        assert getattr(uniklab, name) is not None
    assert issubclass(uniklab.ProbeTimeoutError, uniklab.UniklabError)
