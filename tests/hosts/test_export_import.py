"""`uniklab host export` writes the inventory as TOML and `host import` reads it back: the
same entries, every entry checked before any is added, existing names only with
--replace.  Through the real CLI in-process; nothing here contacts a host."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.support.cli import cli_json
from uniklab.cli.main import main

pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture
def inventory(tmp_path: Path) -> list[object]:
    """Two hosts (one with a key file, labels and a BMC): ``host ls --json`` of them."""
    key = tmp_path / "lab-key"
    key.write_text("not a real key\n")
    assert (
        main(["host", "add", "xd3", "--ssh", "root@192.0.2.7", "-i", str(key), "-l", "rack=2"]) == 0
    )
    assert main(["host", "add", "xd4", "--ssh", "root@xd4.lab", "--port", "2222"]) == 0
    assert main(["host", "add", "q1", "--ssh", "lab@192.0.2.9", "--hypervisor", "qemu"]) == 0
    assert main(["host", "add", "odd", "--ssh", "root@192.0.2.10", "-l", "a.b/c=x y"]) == 0
    return _ls()


def _ls() -> list[object]:
    from uniklab.lab import Lab

    lab = Lab()
    try:
        return [h.as_dict() for h in lab.hosts.ls()]
    finally:
        lab.close()


def _clear() -> None:
    for h in _ls():
        assert isinstance(h, dict)
        assert main(["host", "rm", h["name"]]) == 0


def test_round_trip(
    inventory: list[object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hosts.toml"
    assert main(["host", "export", "-o", str(out)]) == 0
    doc = tomllib.loads(out.read_text())
    assert sorted(doc["hosts"]) == ["odd", "q1", "xd3", "xd4"]
    assert doc["hosts"]["xd3"]["labels"] == {"rack": "2"}
    assert "bmc" not in doc["hosts"]["xd4"] and "labels" not in doc["hosts"]["xd4"]
    capsys.readouterr()
    assert main(["host", "export"]) == 0
    assert capsys.readouterr().out == out.read_text()  # stdout: the same text

    _clear()
    assert main(["host", "import", str(out)]) == 0
    assert "imported 4 host(s)" in capsys.readouterr().out
    assert _ls() == inventory
    assert cli_json(capsys, "host", "ls") == inventory


def test_export_names_some_hosts(
    inventory: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["host", "export", "xd4", "q1"]) == 0
    assert sorted(tomllib.loads(capsys.readouterr().out)["hosts"]) == ["q1", "xd4"]
    assert main(["host", "export", "nope"]) == 3
    assert main(["host", "export", "local"]) == 2


def test_existing_names_need_replace(
    inventory: list[object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hosts.toml"
    assert main(["host", "export", "-o", str(out)]) == 0
    assert main(["host", "rm", "odd"]) == 0
    edited = out.read_text().replace("port = 2222", "port = 2200")
    out.write_text(edited)
    capsys.readouterr()
    assert main(["host", "import", str(out)]) == 4
    err = capsys.readouterr().err
    assert "already in the inventory: q1, xd3, xd4 (--replace replaces them)" in err
    assert len(_ls()) == 3  # 'odd' was not added either
    assert main(["host", "import", "--replace", str(out)]) == 0
    hosts = {h["name"]: h for h in _ls() if isinstance(h, dict)}
    assert sorted(hosts) == ["odd", "q1", "xd3", "xd4"] and hosts["xd4"]["port"] == 2200


@pytest.mark.parametrize(
    "text,code,expected",
    [
        (
            "[hosts.new]\nssh = 'root@192.0.2.1'\nport = 99999\n",
            2,
            "hosts.new.port: invalid SSH port",
        ),
        (
            "[hosts.new]\nssh = 'root@192.0.2.1'\ncolour = 'red'\n",
            2,
            "hosts.new.colour: unknown key",
        ),
        ("[hosts.new]\nssh = '192.0.2.1'\n", 2, "hosts.new.ssh: invalid SSH target"),
        ("[hosts.new]\nidentity = '/no/such/key'\n", 2, "hosts.new.identity: no such file"),
        ("[hosts.new]\nhypervisor = 'vmware'\n", 2, "hosts.new.hypervisor: unknown hypervisor"),
        (
            "[hosts.'Bad Name']\nssh = 'root@192.0.2.1'\n",
            2,
            "hosts.Bad Name.name: invalid host name",
        ),
        ("[hosts.new]\nname = 'other'\n", 2, "hosts.new.name: unknown key"),
        ("[hosts.local]\n", 4, "hosts.local: 'local' is this machine"),
        ("[other]\n", 2, "other: unknown key"),
        ("[hosts.new\n", 2, "not valid TOML"),
    ],
)
def test_a_bad_entry_adds_nothing(
    inventory: list[object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    code: int,
    expected: str,
) -> None:
    """The good entry before the bad one is not added either."""
    file = tmp_path / "in.toml"
    file.write_text("[hosts.good]\nssh = 'root@192.0.2.50'\n\n" + text)
    capsys.readouterr()
    assert main(["host", "import", str(file)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {file}: ") and expected in err, err
    assert _ls() == inventory
