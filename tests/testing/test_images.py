"""The test faces never change a user's images: a recipe is baked under a tag of its own, an
image named with its tag is run as it is (fake backend: host redis-server "guests")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.testing import fakes
from tests.testing.test_plugin import inner, run  # noqa: F401  (inner: a fixture)
from uniklab.api import Client
from uniklab.bake.image import MANIFEST
from uniklab.lab import TEST_TAG, Lab, tag_for_tests
from uniklab.options import RunOptions
from uniklab.paths import Paths
from uniklab.testing import runner, spec

pytest_plugins = ["pytester"]

# The digest of the user's own redis:latest (say, baked with --kernel specialised): not
# what a default bake gives.
USERS = "sha256:" + "5e" * 32


@pytest.fixture(autouse=True)
def _host_kernel(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No specialised kernel built: the test faces bake what ``redis:latest`` was baked with
    (the host's kernel), whatever this machine's cache holds (test_fast_images covers it)."""
    monkeypatch.setenv("UNIKLAB_KERNEL_CACHE", str(tmp_path_factory.mktemp("no-kernels")))


def users_redis(home: Path) -> str:
    """Point redis:latest at an image of the user's own; return the default bake's digest."""
    lab = Lab(Paths(home))
    try:
        row = lab.store.image("redis", "latest")
        assert row is not None and row.digest != USERS
        target = lab.images.dir_for(USERS)
        shutil.copytree(lab.images.dir_for(row.digest), target)
        m = lab.images.manifest(row.digest)
        (target / MANIFEST).write_text(m.model_copy(update={"digest": USERS}).model_dump_json())
        lab.store.put_image("redis", "latest", USERS)
        return row.digest
    finally:
        lab.close()


def tags(home: Path) -> dict[str, str]:
    lab = Lab(Paths(home))
    try:
        return {f"{r.name}:{r.tag}": r.digest for r in lab.store.images()}
    finally:
        lab.close()


def test_tag_names_the_content() -> None:
    assert tag_for_tests("sha256:0123456789abcdef" + "0" * 48) == f"{TEST_TAG}-0123456789ab"


def test_plugin_leaves_the_users_latest_alone(inner: pytest.Pytester, home: Path) -> None:  # noqa: F811
    default = users_redis(home)
    own = f"redis:{tag_for_tests(default)}"
    inner.makepyfile(
        f"""
        def test_recipe(unikernel):
            vm = unikernel("redis")
            assert vm.image == "{own}"
            assert vm.as_dict()["digest"] == "{default}"

        def test_named_tag_is_that_image(unikernel):
            vm = unikernel("redis:latest")
            assert vm.image == "redis:latest"
            assert vm.as_dict()["digest"] == "{USERS}"
        """
    )
    run(inner, home).assert_outcomes(passed=2)
    assert fakes.BAKES == ["redis"], "redis:latest is run as it is, never baked"
    assert tags(home) == {"redis:latest": USERS, own: default}


def test_spec_runner_leaves_the_users_latest_alone(
    home: Path, fake_backend: fakes.FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = users_redis(home)
    # A recipe file of the same name (the old runner baked it as redis:latest).
    (tmp_path / "app.toml").write_text(
        (Path(__file__).parents[2] / "src/uniklab/recipes/redis.toml").read_text()
    )
    text = """
        [[instances]]
        name = "mine"
        image = "redis:latest"

        [[instances]]
        name = "recipe"
        image = "redis"

        [[instances]]
        name = "file"
        image = "app.toml"

        [[tests]]
        name = "ok"
        command = ["true"]
    """
    ran: dict[str, str] = {}
    real_run = Client.run

    def recording_run(self: Client, image: str, options: RunOptions) -> object:
        m = self.lab.image(image)
        ran[str(options.name).rsplit("-", 1)[0]] = f"{m.ref} {m.digest}"
        return real_run(self, image, options)

    monkeypatch.setattr(Client, "run", recording_run)
    with Client(home) as client:
        result = runner.run_spec(spec.parse(text, "t.toml"), client, base=tmp_path, suite="images")
    assert result.ok, result.cases
    own = f"redis:{tag_for_tests(default)}"
    assert ran == {
        "mine": f"redis:latest {USERS}",
        "recipe": f"{own} {default}",
        "file": f"{own} {default}",
    }
    assert tags(home)["redis:latest"] == USERS
    assert fakes.redis_servers(str(home)) == []
