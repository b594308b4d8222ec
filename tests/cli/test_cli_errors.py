"""Bad input through the CLI: one clear line, a non-zero exit, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from uniklab.cli.main import main
from uniklab.lab import Lab
from uniklab.paths import Paths

BAD_RUNS = [
    (["run", "redis", "--name", "bad name"], "invalid instance name"),
    (["run", "redis", "--name", "a;rm -rf /"], "invalid instance name"),
    (["run", "redis", "--name", "../etc"], "invalid instance name"),
    (["run", "redis", "--memory", "lots"], "invalid memory size"),
    (["run", "redis", "--memory", "8M"], "out of range"),
    (["run", "redis", "--memory", "99999G"], "out of range"),
    (["run", "redis", "--vcpus", "0"], "invalid vCPU count"),
    (["run", "redis", "--vcpus", "1000"], "invalid vCPU count"),
    (["run", "redis", "-p", "70000:6379"], "invalid host port"),
    (["run", "redis", "-p", "x"], "invalid guest port"),
    (["run", "redis", "-e", "NOEQUALS"], "invalid environment setting"),
    (["run", "nosuchimage"], "no image nosuchimage:latest"),
    (["run", "Bad/Image"], "invalid image name"),
    (["bake", "nosuchrecipe"], "no recipe named"),
    (["bake", "/nonexistent/recipe.toml"], "no recipe file"),
    (["destroy", "ghost"], "no such instance"),
    (["logs", "ghost"], "no such instance"),
    (["ip", "ghost"], "no such instance"),
    (["check", "ghost"], "no such instance"),
    (["rmi", "ghost"], "no image ghost:latest"),
]


@pytest.mark.parametrize("argv,message", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_input(
    argv: list[str], message: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    lab = Lab(Paths(home))
    assert lab.store.instances() == [] and lab.store.images() == []
    assert list((home / "run").iterdir()) == []
    assert list((home / "images").iterdir()) == []
    lab.close()


def test_name_in_use(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = Lab(Paths(home))
    lab.store.reserve(
        name="taken",
        image="redis:latest",
        digest="sha256:x",
        backend="qemu",
        host="local",
        memory_mb=64,
        vcpus=1,
        owner_pid=1,
        spec={},
        labels={},
    )
    lab.store.update(1, state="exited")
    lab.close()
    assert main(["run", "redis", "--name", "taken"]) == 4
    assert "already exists" in capsys.readouterr().err
