"""Placement (`run --host auto`, a pool `--host a,b`) over real hosts: this machine's QEMU,
hosts that do not answer (an SSH port nobody listens on; a libvirt socket that accepts and
never replies, where libvirt's C call has no timeout of its own), and, as root, this
machine's libvirtd as a second host, with per-host instance limits."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from uniklab.cli.main import main
from uniklab.errors import HostFullError, UsageError
from uniklab.hosts import placement
from uniklab.hosts.placement import Candidate
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths


def test_pool_spellings() -> None:
    assert placement.pool("auto") == ()
    assert placement.pool("kvm1") is None
    assert placement.pool("kvm1,xd3") == ("kvm1", "xd3")
    assert placement.pool("kvm1,") == ("kvm1",)  # a pool of one: placed, limits and all
    for bad in (",", "a,a", "a,b;c", "a,-b"):
        with pytest.raises(UsageError):
            placement.pool(bad)
    with pytest.raises(UsageError, match="names a host twice"):
        RunOptions(host="a,b,a")
    assert RunOptions(host="a, b").host == "a, b"


def test_rank_most_free_memory_first_and_only_hosts_with_room() -> None:
    cands = [
        Candidate("a", 900, 3, None),
        Candidate("b", 4000, 2, 2),  # full
        Candidate("c", 2000, 0, 5),
        Candidate("d", 100, 0, None),  # too little memory
        Candidate("e", 2000, 1, None),
    ]
    assert [c.host for c in placement.rank(cands, 128)] == ["c", "e", "a"]
    assert placement.rank(cands, 8000) == []


@pytest.fixture
def plain_lab(home: Path) -> Iterator[Lab]:
    lab = Lab(Paths(home))
    yield lab
    lab.close()


@pytest.fixture
def mute_socket(tmp_path: Path) -> Iterator[Path]:
    """A unix socket that accepts connections and never says a word (a hung daemon)."""
    path = tmp_path / "mute.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(8)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield path
    done.set()
    t.join(5)
    for conn in held:  # the libvirt call left waiting now ends (EOF)
        conn.close()
    srv.close()


def test_without_shrinks_the_pool(plain_lab: Lab) -> None:
    assert placement.without("a,b,c", plain_lab, "b") == "a,c"
    assert placement.without("a,b", plain_lab, "a") == "b,"
    assert placement.without("a,", plain_lab, "a") is None
    assert placement.without("auto", plain_lab, "local") is None  # an empty inventory


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens there once closed


def test_hosts_that_do_not_answer_are_skipped_with_one_line_each(
    plain_lab: Lab, mute_socket: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("libvirt")
    key = tmp_path / "id"
    key.write_text("not a key\n")
    plain_lab.hosts.add(name="gone", ssh="root@127.0.0.1", port=_closed_port(), identity=str(key))
    plain_lab.hosts.add(
        name="mute", hypervisor="libvirt", libvirt=f"qemu+unix:///system?socket={mute_socket}"
    )
    with caplog.at_level(logging.WARNING, logger="uniklab.hosts.placement"):
        host = placement.place(plain_lab, "auto", memory_mb=64, timeout=3)
    assert host.name == "local"
    lines = sorted(r.getMessage() for r in caplog.records)
    assert len(lines) == 2, lines
    assert lines[0].startswith("host gone skipped: ") and "refused" in lines[0]
    assert lines[1] == "host mute skipped: did not answer within 3 s"


def test_a_full_host_is_not_asked_and_none_left_is_one_error(
    plain_lab: Lab, mute_socket: Path
) -> None:
    plain_lab.hosts.set("local", max_instances=0)  # drained
    assert plain_lab.hosts.get("local").max_instances == 0
    assert [h.name for h in plain_lab.hosts.ls()] == []  # local is in no inventory
    plain_lab.hosts.add(
        name="mute",
        hypervisor="libvirt",
        libvirt=f"qemu+unix:///system?socket={mute_socket}",
        max_instances=0,
    )
    with pytest.raises(HostFullError) as err:
        placement.place(plain_lab, "auto", memory_mb=64, timeout=3)
    assert str(err.value) == (
        "no host can take a 64 MB guest (local: full (0 of 0 instances); "
        "mute: full (0 of 0 instances))"
    )


def test_host_set_and_limits_on_the_cli(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["host", "add", "xd3", "--ssh", "root@192.0.2.7", "--max-instances", "4"]) == 0
    assert main(["host", "set", "xd3", "--max-instances", "2"]) == 0
    assert "host xd3: at most 2 instance(s)" in capsys.readouterr().out
    assert main(["host", "ls"]) == 0
    head, row = capsys.readouterr().out.splitlines()[:2]
    assert "MAX" in head.split() and " 2 " in f" {row} "
    assert main(["host", "set", "xd3", "--no-limit"]) == 0
    assert main(["host", "show", "xd3"]) == 0
    assert '"max_instances": null' in capsys.readouterr().out
    assert main(["host", "set", "local", "--max-instances", "1"]) == 0
    capsys.readouterr()
    for argv, said in (
        (["host", "set", "xd3"], "give --max-instances N or --no-limit"),
        (["host", "set", "xd3", "--max-instances", "-1"], "invalid instance limit -1"),
        (["host", "set", "nosuch", "--no-limit"], "no such host: nosuch"),
        (["host", "add", "x", "--ssh", "root@h", "--max-instances", "-2"], "limit -2"),
        (["run", "redis", "--host", "a,a"], "names a host twice"),
    ):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------- real guests on two engines


@pytest.mark.e2e
@pytest.mark.root
def test_auto_spreads_over_qemu_and_libvirt_under_their_limits(
    lab: Lab, libvirtd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.hosts.add(name="lv", hypervisor="libvirt", libvirt=libvirtd, max_instances=1)
    lab.hosts.set("local", max_instances=1)
    # A dead dom0 in the inventory: skipped with one line, the run goes on.
    lab.hosts.add(name="gone", ssh="root@127.0.0.1", port=_closed_port())
    capsys.readouterr()
    argv = ["run", "redis", "--host", "auto", "--memory", "128M"]
    assert main([*argv, "--name", "p1"]) == 0
    first = capsys.readouterr()
    assert main([*argv, "--name", "p2"]) == 0
    second = capsys.readouterr()
    warned = [ln for ln in (first.err + second.err).splitlines() if "skipped" in ln]
    assert len(warned) == 2 and all("host gone skipped: " in ln for ln in warned), warned
    hosts = {lab.get(n).row.host for n in ("p1", "p2")}
    assert hosts == {"local", "lv"}
    assert {lab.get(n).row.backend for n in ("p1", "p2")} == {"qemu", "libvirt"}
    assert f"p1 running on {lab.get('p1').row.host} " in first.out
    # Both full now: a third is refused in one line, and nothing is left of it.
    assert main([*argv, "--name", "p3"]) == 4
    err = capsys.readouterr().err
    assert "no host can take a 128 MB guest" in err and "lv: full (1 of 1 instances)" in err
    assert [r.name for r in lab.store.instances()] == ["p1", "p2"]
    # A pool names the hosts to choose among; a named full host says it is full.
    assert main(["run", "redis", "--host", "lv", "--memory", "128M", "--name", "p4"]) == 4
    assert "host lv runs 1 instance(s), its limit" in capsys.readouterr().err
    # The host of each instance is in ps (the table's last column, and --json).
    assert main(["ps"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-1] == "Host"
    assert sorted(ln.split()[-1] for ln in table[1:]) == ["local", "lv"]
    for name in ("p1", "p2"):
        assert main(["destroy", name]) == 0
    lab.hosts.set("local", max_instances=None)
    view = lab.run("redis", RunOptions(host="lv,", memory="128M", name="p5", wait=False))
    assert view.row.host == "lv"
    lab.destroy("p5")


@pytest.mark.e2e
@pytest.mark.root
def test_ps_lists_the_instances_of_a_host_that_does_not_answer(
    lab: Lab, libvirtd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.hosts.add(name="lv", hypervisor="libvirt", libvirt=libvirtd)
    lab.run("redis", RunOptions(host="lv", memory="128M", name="far", wait=False))
    lab.hosts.set("lv", libvirt=f"qemu:///system?socket={tmp_path}/none")  # lv is gone
    capsys.readouterr()
    assert main(["ps"]) == 0
    out = capsys.readouterr()
    said = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(said) == 1 and "host lv skipped: " in said[0], said
    [row] = [ln for ln in out.out.splitlines() if ln.startswith("far ")]
    assert "running" in row and row.split()[-1] == "lv"  # as last known, on its host
    lab.hosts.set("lv", libvirt=libvirtd)
    assert main(["destroy", "far"]) == 0


def test_hosts_whose_engine_cannot_run_the_guest_are_left_out(lab: Lab) -> None:
    from uniklab.hosts.inventory import Host
    from uniklab.lab import unfit

    m = lab.image("redis")
    here = Host(name="lv", hypervisor="libvirt", libvirt="qemu:///system")
    far = Host(
        name="k", hypervisor="libvirt", libvirt="qemu+ssh://root@kvm1/system", ssh="root@kvm1"
    )
    dom0 = Host(name="x", ssh="root@xd3")  # inventory data: never contacted here
    assert unfit(here, RunOptions(), m) is None
    assert unfit(dom0, RunOptions(), m) is None  # its xenbr0, as xl's vif
    assert "user-mode ports would not be on this machine" in str(unfit(far, RunOptions(), m))
    assert unfit(far, RunOptions(net="br0"), m) is None
    assert "no user-mode network" in str(unfit(dom0, RunOptions(publish=[(0, 6379)]), m))
    microvm = m.model_copy(update={"acpi": False})
    assert "boots Linux images with an initramfs" in str(unfit(here, RunOptions(), microvm))
    assert unfit(Host(name="local", hypervisor="qemu"), RunOptions(), microvm) is None
