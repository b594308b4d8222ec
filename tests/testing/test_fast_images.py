"""Fast images by default: the test faces (the pytest plugin, ``uniklab test``) and the API's
``run("redis")`` bake with the specialised kernel and an erofs root when this machine has
that kernel built, under a tag of their own; without it they use the host's kernel and say
once, in one line, how to get faster boots."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.testing import fakes
from tests.testing.test_plugin import inner, run  # noqa: F401  (inner: a fixture)
from uniklab.api import Client
from uniklab.bake import kernel_choice
from uniklab.kernel import build as kbuild
from uniklab.lab import TEST_TAG, Lab
from uniklab.paths import Paths
from uniklab.testing import session

pytest_plugins = ["pytester"]


@pytest.fixture
def no_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine where the specialised kernel was never built."""
    empty = tmp_path / "kernels"
    empty.mkdir()
    monkeypatch.setenv("UNIKLAB_KERNEL_CACHE", str(empty))
    return empty


def test_without_the_kernel_the_faces_use_the_hosts_and_say_how(no_kernel: Path) -> None:
    assert kernel_choice.fast_default() is None
    assert session.fast_hint() == kernel_choice.FAST_HINT
    assert "uniklab kernel build" in kernel_choice.FAST_HINT
    assert "\n" not in kernel_choice.FAST_HINT
    # Other backends never get the microvm kernel (it has no PCI), so nothing to say.
    assert session.fast_hint("libvirt") is None


def test_plugin_says_it_once(
    inner: pytest.Pytester,  # noqa: F811
    home: Path,
    no_kernel: Path,
) -> None:
    inner.makepyfile(
        """
        def test_one(unikernel):
            unikernel("redis")

        def test_two(unikernel):
            unikernel("redis")
        """
    )
    result = run(inner, home)
    result.assert_outcomes(passed=2)
    said = [ln for ln in result.outlines if "uniklab kernel build" in ln]
    assert said == [f"uniklab: {kernel_choice.FAST_HINT}"]
    assert fakes.BAKES == ["redis"]


@pytest.mark.e2e
@pytest.mark.timeout(45 * 60)
def test_with_the_kernel_built_the_faces_bake_fast_images(home: Path) -> None:
    """The kernel is built once per machine (tests/kernel built it already in a full run)."""
    entry = kbuild.build("microvm")
    assert kernel_choice.fast_default() == ("specialised", "erofs")
    assert session.fast_hint() is None
    lab = Lab(Paths(home))
    try:
        latest = lab.image("redis:latest")
        m = lab.bake_for_tests("redis")
        assert m.tag.startswith(TEST_TAG) and m.digest != latest.digest
        assert m.kernel.choice == f"specialised:microvm:{entry.key}"
        assert m.root_kind == "erofs"
        # Not for another backend: libvirt's pc machine needs the host kernel's PCI.
        assert lab.bake_for_tests("redis", fast=False).kernel.choice == "host"
        assert lab.image("redis:latest").digest == latest.digest, "the user's tag is left"
        lab.store.delete_image("redis", "latest")  # a fresh machine: no redis:latest baked
    finally:
        lab.close()
    with Client(home) as client, client.run("redis") as vm:
        assert vm.image == m.ref
        assert vm.redis().ping()
    with Client(home) as client:
        assert [i.name for i in client.images()] == ["redis", "redis"]
        assert "latest" not in {i.tag for i in client.images()}, "the API bakes no :latest"


def test_api_runs_an_existing_latest_as_it_is(home: Path, fake_backend: fakes.FakeBackend) -> None:
    with Client(home) as client:
        latest = client.image("redis:latest")
        with client.run("redis") as vm:
            assert vm.image == "redis:latest"
            assert vm.as_dict()["digest"] == latest.digest
            assert isinstance(vm.redis(), redis.Redis)
    assert fakes.BAKES == []
