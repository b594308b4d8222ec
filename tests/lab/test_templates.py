"""Templates and clones for real (QEMU, TCG): a clone answers on its own port with the
host's time, shares nothing writable with its siblings, and a damaged template is rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.support.cli import cli_json
from tests.support.clock import clock_bound
from tests.support.leaks import assert_nothing_left, qemu_processes
from uniklab import templates
from uniklab.cli.main import main
from uniklab.lab import Lab, RunOptions

pytestmark = pytest.mark.e2e


def _client(lab: Lab, name: str) -> redis.Redis:
    return redis.Redis("127.0.0.1", lab.ip(name).ports[0][0], socket_timeout=5)


def _client_of(capsys: pytest.CaptureFixture[str], name: str) -> redis.Redis:
    rows = cli_json(capsys, "ps")
    assert isinstance(rows, list)
    [row] = [r for r in rows if r["name"] == name]
    return redis.Redis("127.0.0.1", row["ports"][0]["host"], socket_timeout=5)


def _create(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    """`template create --json redis ARGV` (its JSON flag before the app's args)."""
    capsys.readouterr()
    assert main(["template", "create", "--json", "redis", *argv]) == 0
    made = json.loads(capsys.readouterr().out)
    assert isinstance(made, dict)
    return made


def test_clones_answer_with_the_hosts_clock_and_share_nothing(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = lab.run("redis", RunOptions(name="c1", clone=True))
    assert one.clone_of is not None
    [t] = templates.ls(lab.paths)
    assert one.clone_of == t.key and t.image == "redis:latest"
    # The template's clock is as old as the template: the clone's is the host's.
    time.sleep(2)
    two = lab.run("redis", RunOptions(name="c2", clone=True))
    assert two.clone_of == t.key
    r1, r2 = _client(lab, "c1"), _client(lab, "c2")
    bound = clock_bound(r2)
    assert bound < 0.050, f"clone clock off by at least {bound * 1000:.1f} ms"
    assert one.forwards[0][0] != two.forwards[0][0]
    assert r1.ping() and r2.ping()
    assert r1.set("k", "one") and r1.get("k") == b"one"
    assert r2.get("k") is None
    assert "uniklab-init: restored: clock set" in lab.logs("c2")
    assert "uniklab-init: exec /bin/redis-server" in lab.logs("c2")  # the template's boot
    lab.destroy("c1")
    lab.run("redis", RunOptions(name="c3", clone=True))
    r3 = _client(lab, "c3")
    assert r3.get("k") is None and r3.set("k", "three")
    assert r2.get("k") is None
    assert templates.check(t.path, t.key).key == t.key  # untouched by its clones
    rows = {v.name: v.as_dict() for v in lab.ps()}
    assert rows["c2"]["clone_of"] == t.key and rows["c3"]["clone_of"] == t.key
    # A clone's init hears a graceful stop; started again, it boots
    assert lab.stop("c2").state == "stopped"
    assert lab.start("c2").clone_of is None
    assert _client(lab, "c2").ping()
    for name in ("c2", "c3"):
        lab.destroy(name)
    assert_nothing_left(lab_home)
    assert cli_json(capsys, "gc", "--dry-run") == []  # the image is there: so is its template
    lab.rmi("redis")
    assert templates.ls(lab.paths) == []
    assert not any(Path(lab.paths.home, "templates").glob("[0-9a-f]*[0-9a-f]"))


def test_damaged_template_is_rebuilt(lab_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = _create(capsys, "--", "--maxmemory", "10mb")
    assert made["built"] is True and made["args"] == ["--maxmemory", "10mb"]
    again = _create(capsys, "--", "--maxmemory", "10mb")
    assert isinstance(again, dict) and again["built"] is False and again["key"] == made["key"]
    path = Path(str(made["path"]))
    state = path / "state"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    clone = ["run", "redis", "--template", "--name"]
    assert main([*clone, "d1", "--", "--maxmemory", "10mb"]) == 0
    meta = json.loads((path / "meta.json").read_text())
    assert meta["created"] > float(str(made["created"]))  # rebuilt, not restored from a bad state
    (path / "memory").unlink()
    assert main([*clone, "d2", "--", "--maxmemory", "10mb"]) == 0
    assert _client_of(capsys, "d2").config_get("maxmemory") == {"maxmemory": "10485760"}
    listed = cli_json(capsys, "template", "ls")
    assert isinstance(listed, list) and [t["key"] for t in listed] == [made["key"]]
    assert main(["destroy", "--all"]) == 0
    assert main(["template", "rm", str(made["key"])[:8]]) == 0
    assert cli_json(capsys, "template", "ls") == []
    assert_nothing_left(lab_home)
    assert qemu_processes(str(lab_home)) == []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "redis", "--template", "--net", "nosuchnet"], "user-mode network only"),
        (["run", "redis", "--template", "--restart", "on-failure"], "boots the guest again"),
        (["template", "rm"], "give template KEYs or --all"),
        (["template", "rm", "zz"], "invalid template key"),
        (["template", "rm", "abcdef"], "no template abcdef"),
        (["template", "create", "redis", "--vcpus", "0"], "invalid vCPU count"),
    ],
)
def test_bad_input_is_one_line(
    lab_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    capsys.readouterr()
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert_nothing_left(lab_home)
    assert templates.ls(Lab().paths) == []


def _fake_template(base: Path, key: str, digest: str) -> Path:
    path = base / key
    path.mkdir(parents=True)
    (path / "state").write_bytes(b"state")
    files = {"state": templates._fingerprint(path / "state")}
    meta = {"format": templates.FORMAT, "key": key, "digest": digest, "files": files}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_gc_takes_templates_of_gone_images_damaged_ones_and_dead_builds(
    lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = lab_home / "templates"
    gone = _fake_template(base, "a" * 64, "sha256:" + "0" * 64)
    damaged = _fake_template(base, "b" * 64, "sha256:" + "0" * 64)
    (damaged / "meta.json").write_text("{")
    build = base / ".b999999999"
    build.mkdir()
    found = cli_json(capsys, "gc", "--dry-run")
    assert isinstance(found, list)
    assert sorted((i["kind"], i["name"]) for i in found) == [
        ("staging", str(build)),
        ("template", str(gone)),
        ("template", str(damaged)),
    ]
    assert main(["gc"]) == 0
    assert not gone.exists() and not damaged.exists() and not build.exists()


def _key(lab: Lab, name: str = "x", host_port: int = 0, **fields: object) -> str:
    """The template key of running redis with ``fields`` as instance ``name``."""
    from uniklab import boot
    from uniklab.backends import registry
    from uniklab.net.attachment import Attachment

    o = RunOptions(**fields)  # type: ignore[arg-type]
    m = lab.image("redis")
    engine = registry.get("qemu")
    nic = Attachment("user", "52:54:00:12:34:56", ((host_port, 6379),))
    req = boot.BootRequest(
        name=name,
        args=list(o.args),
        env=dict(o.env or {}),
        disks=(),
        nics=(nic,),
        time_source="10.0.2.100:37",
        memory_mb=o.memory_mb or 128,
        vcpus=o.vcpus,
        rundir=lab.paths.run / name,
    )
    backend = lab.backend("qemu", lab.images.kernel_path(m, "qemu"))
    return templates._plan(lab, m, engine, backend, req).key


def test_the_key_follows_the_guest_not_the_instance(lab: Lab) -> None:
    base = _key(lab)
    assert _key(lab, name="other", host_port=40000) == base  # the instance's own parts
    different = [
        _key(lab, memory="256M"),
        _key(lab, vcpus=2),
        _key(lab, args=["--maxmemory", "10mb"]),
        _key(lab, env={"A": "1"}),
    ]
    assert len({base, *different}) == 1 + len(different)


def test_two_commands_make_one_template(lab_home: Path) -> None:
    """Two `template create` at once: one builds, the other waits for it and uses it."""
    env = {**os.environ, "UNIKLAB_HOME": str(lab_home)}
    argv = [sys.executable, "-m", "uniklab", "template", "create", "--json", "redis"]
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode() for _, e in outs]
    made = [json.loads(out) for out, _ in outs]
    assert sorted(m["built"] for m in made) == [False, True]
    assert made[0]["key"] == made[1]["key"]
    assert [t.key for t in templates.ls(Lab().paths)] == [made[0]["key"]]
    assert not list((lab_home / "templates").glob(".b*"))
