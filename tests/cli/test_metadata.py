"""Versions and metadata: one version everywhere, a LICENSE matching pyproject, and help
for every verb (``rumprun`` parses its own options)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import click
import pytest

import uniklab
from uniklab.cli.main import cli, main

ROOT = Path(__file__).resolve().parents[2]


def test_version_has_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    newest = re.search(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert newest is not None
    assert uniklab.__version__ == newest.group(1), "CHANGELOG's newest entry is the version"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "uniklab.__version__"}
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"uniklab, version {uniklab.__version__}"


def test_license_file_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the uniklab authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_rumprun_help(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rumprun", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: uniklab rumprun [--host HOST] [-DS] PLATFORM [GUEST OPTIONS] APP")
    assert "-W net0,inet,dhcp redis" in out  # the example


def test_rumprun_names_a_long_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rumprun", "qemu", "--memory", "64", "redis"]) == 2
    assert capsys.readouterr().err.strip() == "error: rumprun: unknown qemu option --memory"


def _commands() -> list[list[str]]:
    # Every verb, loaded (the group imports a verb's module when it is first asked for).
    ctx = click.Context(cli)
    out = []
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        out.append([name])
        for sub in getattr(cmd, "commands", {}):
            out.append([name, sub])
    return out


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_verb_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"Usage: uniklab {' '.join(argv)}")
