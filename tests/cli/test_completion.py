"""Shell completion through click's own machinery: verbs, then the names a verb takes
(instances, images, networks, hosts), read from the store without touching it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.shell_completion import ShellComplete, shell_complete

from uniklab.cli import complete
from uniklab.cli.main import cli
from uniklab.paths import Paths
from uniklab.state.store import CRASHED, RUNNING, NetworkRow, Store

DEAD_PID = 2**22 + 1  # above pid_max's default: no process has it


def values(args: list[str], incomplete: str) -> list[str]:
    comp = ShellComplete(cli, {}, "uniklab", "_UNIKLAB_COMPLETE")
    return [item.value for item in comp.get_completions(args, incomplete)]


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    s = Store(Paths(home).ensure().db)
    s.put_image("redis", "latest", "sha256:" + "1" * 64)
    s.put_image("redis", "small", "sha256:" + "2" * 64)
    s.put_image("nginx", "latest", "sha256:" + "3" * 64)
    for name, state in (("redis-a1", RUNNING), ("redis-b2", CRASHED), ("web", RUNNING)):
        row = s.reserve(
            name=name, image="redis:latest", digest="sha256:" + "1" * 64, backend="qemu",
            host="local", memory_mb=64, vcpus=1, owner_pid=None, spec={}, labels={},
        )  # fmt: skip
        s.update(row.id, state=state, pid=DEAD_PID, runtime={"rundir": f"/nonexistent/{name}"})
    for name in ("lab", "lan"):
        s.reserve_network(
            NetworkRow(
                name=name, state="ready", owner_pid=None, subnet="10.77.0.0/24",
                gateway="10.77.0.1", bridge=f"br-{name}", netns=None, dhcp=True,
                made_bridge=True, made_netns=False, dnsmasq_pid=None, rundir="/nonexistent",
                created=time.time(),
            )
        )  # fmt: skip
    s.put_host("xd3", '{"name": "xd3", "ssh": "root@192.0.2.7", "hypervisor": "xen"}')
    yield s
    s.close()


def test_verbs(store: Store) -> None:
    assert values([], "d") == ["demo", "destroy", "doctor"]
    assert values([], "ps") == ["ps"]
    assert "--verbose" in values([], "--v")


@pytest.mark.parametrize("verb", ["destroy", "logs", "check", "ip", "console"])
def test_instance_names(verb: str, store: Store) -> None:
    assert values([verb], "") == ["redis-a1", "redis-b2", "web"]
    assert values([verb], "redis-") == ["redis-a1", "redis-b2"]


def test_several_names(store: Store) -> None:
    assert values(["destroy", "web"], "r") == ["redis-a1", "redis-b2"]


def test_images(store: Store) -> None:
    assert values(["rmi"], "") == ["nginx:latest", "redis:latest", "redis:small"]
    # run: images, and the built-in recipes (baked on first run)
    run = values(["run"], "redis")
    assert run[:2] == ["redis:latest", "redis:small"]
    assert "redis" in run and "redis-static" in run
    assert values(["run"], "./") == ["./"]  # a file: the shell completes it


def test_networks_and_hosts(store: Store) -> None:
    assert values(["run", "redis", "--net"], "") == ["lab", "lan"]
    assert values(["run", "redis", "--net"], "lab,") == []
    assert values(["net", "rm"], "la") == ["lab", "lan"]
    assert values(["run", "redis", "--host"], "") == ["local", "xd3", "auto"]
    assert values(["ps", "--host"], "") == ["local", "xd3"]
    for sub in ("show", "rm", "doctor"):
        assert values(["host", sub], "x") == ["xd3"]


def test_ps_filters(store: Store) -> None:
    assert values(["ps", "--filter"], "state=c") == ["state=crashed", "state=creating"]
    assert values(["ps", "-f"], "") == [
        "state=running", "state=paused", "state=stopped", "state=exited", "state=crashed",
        "state=creating", "label=", "name=",
    ]  # fmt: skip


def test_a_completion_changes_nothing(store: Store, home: Path) -> None:
    """No reconcile: a dead guest is still 'running' in the store afterwards."""
    assert values(["destroy"], "redis-a") == ["redis-a1"]
    assert store.instance("redis-a1").state == RUNNING


def test_no_home_no_names_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "nothing"
    monkeypatch.setenv("UNIKLAB_HOME", str(home))
    assert values(["destroy"], "") == []
    assert values(["run", "redis", "--host"], "") == ["local", "auto"]
    assert not home.exists()


def test_a_damaged_store_completes_nothing(home: Path) -> None:
    (home / "state.db").write_bytes(b"not a database" * 100)
    assert values(["destroy"], "") == []


def test_builtin_recipes_are_the_bakers() -> None:
    from uniklab.bake import recipe

    assert complete.builtin_recipes() == recipe.builtin_names()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_scripts_the_readme_sources(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert shell_complete(cli, {}, "uniklab", "_UNIKLAB_COMPLETE", f"{shell}_source") == 0
    script = capsys.readouterr().out
    assert "_UNIKLAB_COMPLETE" in script and f"{shell}_complete" in script


def test_bash_complete_protocol(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """What bash's completion function asks, as it asks it (environment variables)."""
    env = {"COMP_WORDS": "uniklab logs we", "COMP_CWORD": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert shell_complete(cli, {}, "uniklab", "_UNIKLAB_COMPLETE", "bash_complete") == 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert capsys.readouterr().out.split() == ["plain,web"]
