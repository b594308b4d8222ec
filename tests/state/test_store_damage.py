"""A damaged state.db: one line naming the file and what to do, never a traceback;
`uniklab store rebuild` brings the images back from disk; `uniklab gc` still sweeps."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.procs import wait_for_exec
from uniklab.bake.image import MANIFEST, KernelInfo, Manifest
from uniklab.bake.recipe import ProbeSpec
from uniklab.cli.main import main
from uniklab.errors import StoreDamagedError
from uniklab.state.store import Store


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x8b\x1f not a database, a half-copied tarball perhaps \x00" * 200)


def _truncated(path: Path) -> None:
    store = Store(path)
    for i in range(40):
        store.put_image(f"app{i}", "latest", f"sha256:{i:064x}")
    store.close()  # the last connection checkpoints: everything is in the main file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short, a full disk


def _rootpage(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    page = int(
        db.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    )
    db.close()
    return page


def _bad_page(path: Path) -> None:
    """Header and schema intact, the instances table's root page overwritten: the store
    opens, and the damage shows only when a command reads the instances."""
    store = Store(path)
    store.reserve(
        name="r1", image="redis:latest", digest="sha256:x", backend="qemu", host="local",
        memory_mb=64, vcpus=1, owner_pid=1, spec={}, labels={},
    )  # fmt: skip
    store.close()
    page = _rootpage(path, "instances")
    data = bytearray(path.read_bytes())
    data[(page - 1) * 4096 : page * 4096] = b"\xa5" * 4096
    path.write_bytes(bytes(data))


DAMAGES: dict[str, Callable[[Path], None]] = {
    "garbage": _garbage,
    "truncated": _truncated,
    "bad-page": _bad_page,
}


COMMANDS = [["ps"], ["images"], ["run", "redis"], ["destroy", "r1"], ["net", "ls"]]
CASES = [(d, argv) for d in ("garbage", "truncated") for argv in COMMANDS] + [
    # Only the commands that read the damaged table see the damage.
    ("bad-page", argv)
    for argv in (["ps"], ["run", "redis"], ["destroy", "r1"])
]


@pytest.mark.parametrize("damage,argv", CASES, ids=[f"{d}-{'-'.join(argv)}" for d, argv in CASES])
def test_a_damaged_store_is_one_line(
    damage: str, argv: list[str], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = home / "state.db"
    DAMAGES[damage](db)
    before = db.read_bytes()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert f"{db} is damaged" in err
    assert "uniklab store rebuild" in err
    assert db.read_bytes() == before  # reported, not "repaired" behind the user's back


def test_damage_found_after_opening_is_the_same_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _bad_page(path)
    store = Store(path)
    assert store.damage is None
    with pytest.raises(StoreDamagedError, match="database disk image is malformed"):
        store.instances()
    store.close()


# -- rebuild -----------------------------------------------------------------------------


def _image(home: Path, name: str, tag: str, n: int, created: float) -> Manifest:
    m = Manifest(
        name=name, tag=tag, digest=f"sha256:{n:064x}", created=created,
        kernel=KernelInfo(release="6.1.0-test", source="host"), compression="gzip",
        size=2, kernel_size=1, initrd_size=1, cmdline="console=ttyS0",
        entrypoint=[f"/usr/bin/{name}"], ports=[6379], probe=ProbeSpec(kind="tcp", port=6379),
        memory="128M", files=3, bake_seconds=1.0,
    )  # fmt: skip
    d = home / "images" / m.digest.replace(":", "-")
    d.mkdir(parents=True)
    (d / "kernel").write_bytes(b"k")
    (d / "initrd").write_bytes(b"i")
    (d / MANIFEST).write_text(m.model_dump_json())
    return m


@pytest.fixture
def fake_qemu(home: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """A process that looks like a guest's QEMU to uniklab (its command line names
    qemu-system and its runtime directory), and that leaves no trace if a test fails."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(rid: str) -> subprocess.Popen[bytes]:
        rundir = home / "run" / rid
        rundir.mkdir(parents=True)
        argv = [sys.executable, "-c", "import time; time.sleep(120)", "qemu-system-x86_64",
                "-pidfile", f"{rundir}/qemu.pid"]  # fmt: skip
        proc = subprocess.Popen(argv)
        procs.append(proc)
        wait_for_exec(proc.pid, f"{rundir}/qemu.pid")
        (rundir / "qemu.pid").write_text(f"{proc.pid}\n")
        (rundir / "console.log").write_text("uniklab-init: exec /usr/bin/redis-server\n")
        return proc

    yield start
    for p in procs:
        p.kill()
        p.wait(timeout=10)


def test_rebuild_restores_the_images_on_disk(
    home: Path,
    fake_qemu: Callable[[str], subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = _image(home, "redis", "latest", 1, created=1000.0)
    new = _image(home, "redis", "latest", 2, created=2000.0)
    nginx = _image(home, "nginx", "latest", 3, created=1500.0)
    (home / "images" / "sha256-bad").mkdir()  # no manifest: not an image
    (home / "images" / ".tmp-1-0000").mkdir()  # a bake's staging directory
    qemu = fake_qemu("1")
    (home / "run" / "2").mkdir(parents=True)  # a guest that is gone
    _garbage(home / "state.db")
    garbage = (home / "state.db").read_bytes()

    assert main(["store", "rebuild", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    aside = Path(out["moved_to"])
    assert aside.parent == home and aside.name.startswith("state.db.corrupt-")
    assert aside.read_bytes() == garbage
    assert out["tagged"] == [
        {"ref": "nginx:latest", "digest": nginx.digest},
        {"ref": "redis:latest", "digest": new.digest},
    ]
    assert out["untagged"] == [{"ref": "redis:latest", "digest": old.digest}]
    assert out["unreadable"] == [str(home / "images" / "sha256-bad")]
    assert out["rundirs"] == [
        {"path": str(home / "run" / "1"), "pid": qemu.pid},
        {"path": str(home / "run" / "2"), "pid": None},
    ]

    assert main(["images", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["tag"], m["digest"]) for m in listed] == [
        ("nginx", "latest", nginx.digest),
        ("redis", "latest", new.digest),
    ]
    # The rebuilt store is a store: another rebuild is refused unless forced.
    assert main(["store", "rebuild"]) == 2
    assert "is not damaged" in capsys.readouterr().err
    # What the lost rows explained is now gc's: the guest, both runtime dirs, the
    # image only a lost instance could have used; the tagged images stay.
    assert main(["gc", "--dry-run", "--json"]) == 0
    swept = {(i["kind"], i["name"]) for i in json.loads(capsys.readouterr().out)}
    assert swept == {
        ("process", str(qemu.pid)),
        ("rundir", str(home / "run" / "1")),
        ("rundir", str(home / "run" / "2")),
        ("image", str(home / "images" / old.digest.replace(":", "-"))),
        ("image", str(home / "images" / "sha256-bad")),
        ("staging", str(home / "images" / ".tmp-1-0000")),
    }


def test_rebuild_says_a_running_guest_is_left_for_gc(
    home: Path,
    fake_qemu: Callable[[str], subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _image(home, "redis", "latest", 1, created=1000.0)
    qemu = fake_qemu("5")
    _truncated(home / "state.db")
    assert main(["store", "rebuild"]) == 0
    out = capsys.readouterr().out
    assert f"QEMU {qemu.pid} still runs" in out and "'uniklab gc' stops it" in out
    assert "tagged redis:latest" in out


def test_rebuild_of_a_missing_store_indexes_the_images(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = _image(home, "redis", "latest", 1, created=1000.0)
    assert main(["store", "rebuild", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["moved_to"] is None
    assert Store(home / "state.db").image("redis", "latest") is not None
    assert [t["digest"] for t in out["tagged"]] == [m.digest]


def test_gc_sweeps_this_machine_without_the_store(
    home: Path,
    fake_qemu: Callable[[str], subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = _image(home, "redis", "latest", 1, created=1000.0)
    qemu = fake_qemu("7")
    (home / "run" / "8").mkdir(parents=True)
    _garbage(home / "state.db")

    assert main(["gc", "--dry-run", "--json"]) == 1
    captured = capsys.readouterr()
    swept = {(i["kind"], i["name"]) for i in json.loads(captured.out)}
    assert swept == {
        ("process", str(qemu.pid)),
        ("rundir", str(home / "run" / "7")),
        ("rundir", str(home / "run" / "8")),
    }
    assert captured.err.count("\n") == 1 and "is damaged" in captured.err
    assert "Traceback" not in captured.err

    assert main(["gc"]) == 1
    assert qemu.wait(timeout=10) is not None
    assert sorted((home / "run").iterdir()) == []
    assert (home / "images" / m.digest.replace(":", "-") / MANIFEST).is_file()
