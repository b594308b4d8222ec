"""Start-up: the command loads a verb's module when that verb is used, and the heavy
libraries (pyroute2, redis, pydantic, rich) only when the verb needs them.  What a fresh
interpreter imports is checked in a subprocess; no timing is asserted here (that is
bench/bench_cli.py's job)."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import uniklab.cli
from uniklab.cli.main import VERBS, cli, main

HEAVY = ("pyroute2", "redis", "pydantic", "rich", "uniklab.lab", "uniklab.api")


def _imported_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = (
        "import sys\n"
        f"{code}\n"
        "import json\n"
        f"heavy = {HEAVY!r}\n"
        "found = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy)\n"
        "sys.__stderr__.write('\\nIMPORTED ' + json.dumps(found) + '\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("IMPORTED ")]
    assert line, done.stderr
    return list(json.loads(line[-1].removeprefix("IMPORTED ")))


def test_importing_the_command_imports_nothing_heavy() -> None:
    assert _imported_after("import uniklab.cli.main") == []


def test_help_imports_no_verb_and_nothing_heavy() -> None:
    code = (
        "from uniklab.cli.main import main\n"
        "assert main(['--help']) == 0\n"
        "assert not [m for m in sys.modules if m.startswith('uniklab.cli.')"
        " and m not in ('uniklab.cli.main', 'uniklab.cli.common')], sorted(sys.modules)\n"
    )
    assert _imported_after(code) == []


@pytest.mark.parametrize(
    "words,cword", [("uniklab ps", 1), ("uniklab destroy ", 2), ("uniklab run ", 2)]
)
def test_a_completion_imports_nothing_heavy(words: str, cword: int, home: Path) -> None:
    env = {"_UNIKLAB_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    code = (
        "from uniklab.cli.main import cli\n"
        "try:\n"
        "    cli.main(prog_name='uniklab')\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    assert _imported_after(code, env) == []


def test_json_output_needs_no_rich(home: Path) -> None:
    code = "from uniklab.cli.main import main\nassert main(['ps', '--json']) == 0\n"
    assert not [m for m in _imported_after(code) if m.startswith("rich")]


def _loaded(name: str) -> click.Command:
    cmd = cli.get_command(click.Context(cli), name)
    assert cmd is not None
    return cmd


@pytest.mark.parametrize("name", sorted(VERBS))
def test_each_summary_is_the_verbs_own(name: str) -> None:
    """`uniklab --help` lists VERBS' summaries: each shortens as the verb's help does."""
    real = _loaded(name)
    stand_in = click.Command(name, help=VERBS[name].summary)
    for limit in (20, 45, 60, 74, 100, 400):
        assert stand_in.get_short_help_str(limit) == real.get_short_help_str(limit), limit


def test_every_verb_module_is_listed() -> None:
    helpers = {"common", "complete", "main"}
    modules = {m.name for m in pkgutil.iter_modules(uniklab.cli.__path__)} - helpers
    assert modules == {v.target.split(":")[0].rsplit(".", 1)[1] for v in VERBS.values()}
    assert set(VERBS) == {name for name in VERBS if _loaded(name).name == name}


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = out.split("Commands:\n", 1)[1]
    assert [ln.split()[0] for ln in listed.splitlines() if ln.strip()] == sorted(VERBS)
    assert "QEMU or Xen" in out and "Examples:" in out
