"""Start-up: the command loads a verb's module when that verb is used, and the heavy
libraries (pyroute2, redis, pydantic, rich, asyncio for QMP) only when the verb needs
them.  What a fresh interpreter imports is checked in a subprocess; no timing is asserted
here (that is bench/bench_cli.py's job)."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

import uniklab.cli
from tests.support.procs import wait_for_exec
from uniklab.cli.main import VERBS, cli, main
from uniklab.net.attachment import Attachment
from uniklab.paths import Paths
from uniklab.state.store import RUNNING, Store

HEAVY = ("pyroute2", "redis", "pydantic", "rich", "asyncio", "qemu", "uniklab.lab", "uniklab.api")


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


@pytest.fixture
def running_guest(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A store row of a running QEMU guest with a published port, its process a stand-in
    (``sleep`` whose command line names the runtime directory, as bench_cli's)."""
    monkeypatch.setenv("UNIKLAB_ACCEL", "tcg")  # no KVM probe: ps must not need one either
    store = Store(Paths(home).ensure().db)
    rundir = home / "run" / "r1"
    rundir.mkdir(parents=True)
    proc = subprocess.Popen(["sh", "-c", "sleep 600; :", str(rundir)])
    try:
        wait_for_exec(proc.pid, str(rundir))
        row = store.reserve(
            name="r1", image="redis:latest", digest="sha256:" + "1" * 64, backend="qemu",
            host="local", memory_mb=64, vcpus=1, owner_pid=None, spec={}, labels={"a": "b"},
        )  # fmt: skip
        nic = Attachment(kind="user", mac="52:54:00:00:00:01", forwards=((40001, 6379),))
        store.update(
            row.id,
            state=RUNNING,
            pid=proc.pid,
            started=time.time(),
            runtime={"rundir": str(rundir), "accel": "tcg"},
            attachments=[nic],
        )
        store.close()
        yield "r1"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "argv", [["ps"], ["ps", "--json"], ["ps", "-q", "--filter", "state=running"]]
)
def test_ps_reads_the_store_and_proc_only(argv: list[str], running_guest: str) -> None:
    """`ps` over a running guest: no netlink (pyroute2), no models (pydantic), no QMP
    (asyncio), no redis, and into a pipe no rich: the store and /proc are enough."""
    code = (
        "import io, contextlib\n"
        "from uniklab.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main({argv!r}) == 0\n"
        "text = out.getvalue()\n"
        f"assert {running_guest!r} in text and ('running' in text or '-q' in {argv!r}), text\n"
    )
    assert _imported_after(code) == ["uniklab.lab"]


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
    helpers = {"common", "complete", "main", "progress"}
    modules = {m.name for m in pkgutil.iter_modules(uniklab.cli.__path__)} - helpers
    assert modules == {v.target.split(":")[0].rsplit(".", 1)[1] for v in VERBS.values()}
    assert set(VERBS) == {name for name in VERBS if _loaded(name).name == name}


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = out.split("Commands:\n", 1)[1]
    assert [ln.split()[0] for ln in listed.splitlines() if ln.strip()] == sorted(VERBS)
    assert "QEMU or Xen" in out and "Examples:" in out
