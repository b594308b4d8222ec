"""``uniklab test``: the spec model, the runner (fake backend), the CLI, one real run (e2e)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.testing import fakes
from tests.testing.conftest import ROOT, store_names
from uniklab.cli.main import main
from uniklab.errors import UsageError
from uniklab.testing import spec

SPEC = """
name = "suite"

[[instances]]
name = "my-cache"
image = "redis"
memory = "128M"

[[tests]]
name = "ping"
command = ["redis-cli", "-h", "${MY_CACHE_HOST}", "-p", "${MY_CACHE_PORT}", "ping"]
expect_stdout = "PONG"

[[tests]]
name = "env"
command = "sh -c 'test \\"$MY_CACHE_ADDR\\" = \\"$MY_CACHE_HOST:$MY_CACHE_PORT_6379\\"'"

[[tests]]
name = "fails"
command = ["sh", "-c", "echo to-stderr >&2; exit 3"]

[[tests]]
name = "slow"
command = ["sleep", "5"]
timeout = 0.5

[[tests]]
name = "wrong output"
command = ["echo", "nope"]
expect_stdout = "yes"
"""


def test_spec_parses() -> None:
    s = spec.parse(SPEC, "t.toml")
    assert [i.env_prefix for i in s.instances] == ["MY_CACHE"]
    assert s.tests[1].argv[0:2] == ["sh", "-c"]
    assert s.tests[3].timeout == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('tests = [{name = "a", command = "true", typo = 1}]', "Extra inputs are not permitted"),
        ("tests = []", "at least 1"),
        ('tests = [{name = "a", command = ""}]', "empty command"),
        (
            '[[instances]]\nname = "r"\nimage = "redis"\nmemory = "lots"\n'
            'tests = [{name = "a", command = "true"}]',
            "instances",
        ),
        (
            'instances = [{name = "a-b", image = "redis"}, {name = "a_b", image = "redis"}]\n'
            'tests = [{name = "t", command = "true"}]',
            "clash as variables: A_B",
        ),
        ('tests = [{name = "t", command = "true"}, {name = "t", command = "x"}]', "duplicate"),
        ('instances = [{name = "Bad", image = "redis"}]', "instances.0.name"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_spec_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")) as err:
        spec.parse(text, "t.toml")
    assert str(err.value).startswith("t.toml:")


def test_cli_runs_reports_and_tears_down(
    home: Path,
    fake_backend: fakes.FakeBackend,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(SPEC)
    junit = tmp_path / "out" / "junit.xml"
    assert main(["test", str(path), "--junit", str(junit)]) == 1
    out, err = capsys.readouterr()
    assert "PASS ping" in out and "FAIL fails" in out and "to-stderr" in out
    assert "suite: 2 passed, 3 failed, 0 errors, 0 skipped" in err
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("suite", "5", "3")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["ping"].find("failure") is None
    assert cases["ping"].findtext("system-out") == "PONG\n"
    fails = cases["fails"].find("failure")
    assert fails is not None and fails.get("message") == "exited 3"
    assert cases["fails"].findtext("system-err") == "to-stderr\n"
    slow = cases["slow"].find("failure")
    assert slow is not None and slow.get("message") == "timed out after 0.5s"
    wrong = cases["wrong output"].find("failure")
    assert wrong is not None and "does not contain 'yes'" in str(wrong.get("message"))
    assert store_names(home) == []
    assert fakes.redis_servers(str(home)) == []


def test_setup_failure_skips_tests_and_cleans_up(
    home: Path, fake_backend: fakes.FakeBackend, tmp_path: Path
) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(
        '[[instances]]\nname = "a"\nimage = "redis"\n'
        '[[instances]]\nname = "b"\nimage = "nosuch:1.0"\n'
        '[[tests]]\nname = "t"\ncommand = "true"\n'
    )
    junit = tmp_path / "j.xml"
    assert main(["test", str(path), "--junit", str(junit)]) == 1
    suite = ET.parse(junit).getroot()[0]
    assert (suite.get("errors"), suite.get("skipped")) == ("1", "1")
    error = suite.find("testcase/error")
    assert error is not None and "no image nosuch:1.0" in str(error.get("message"))
    assert store_names(home) == []
    assert fakes.redis_servers(str(home)) == []


def test_missing_spec_file(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "/nonexistent/lab.toml"]) == 3
    assert "no spec file" in capsys.readouterr().err


@pytest.mark.e2e
def test_example_spec_on_a_real_guest(home: Path, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    # As a user with the virtualenv active runs it: the CLI from this interpreter (never a
    # `uniklab` found on PATH), and the example's `python` test command is the venv's.
    bindir = str(Path(sys.executable).parent)
    proc = subprocess.run(
        [sys.executable, "-m", "uniklab", "test", str(ROOT / "examples" / "lab.toml"),
         "--junit", str(junit)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed, 0 failed" in proc.stdout
    suite = ET.parse(junit).getroot()[0]
    assert (suite.get("tests"), suite.get("failures")) == ("2", "0")
    assert store_names(home) == []
    ps = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    assert str(home) not in ps.stdout
