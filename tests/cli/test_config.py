"""The configuration: defaults for options from a TOML file and UNIKLAB_<VERB>_<KEY>
variables, through the real CLI in-process.  A command-line option beats its variable,
which beats the file, which beats the built-in default; `config show` says which one
each value came from; a bad file or variable is one error line naming it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import cli_json
from uniklab.cli.main import main

pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the config file is read from ($XDG_CONFIG_HOME/uniklab/config.toml); not
    written yet."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "xdg" / "uniklab" / "config.toml"
    path.parent.mkdir(parents=True)
    return path


def _settings(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    shown = cli_json(capsys, "config", "show")
    assert isinstance(shown, dict)
    return {s["setting"]: s for s in shown["settings"]}


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_without_a_file_the_options_own_defaults(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = cli_json(capsys, "config", "show")
    assert isinstance(shown, dict)
    assert shown["file"] == str(config_file) and shown["found"] is False
    settings = {s["setting"]: s for s in shown["settings"]}
    assert {s["source"] for s in settings.values()} == {"default"}
    assert settings["run.vcpus"]["value"] == 1
    assert settings["run.host"]["value"] == "local"
    assert settings["run.timeout"]["value"] == 120.0  # RunOptions' DEFAULT_WAIT
    assert settings["run.memory"]["value"] is None  # the image's
    assert settings["bake.kernel"]["value"] == "host"
    assert settings["check.timeout"]["value"] == 5.0
    assert settings["run.memory"]["env"] == "UNIKLAB_RUN_MEMORY"
    assert settings["run.memory"]["option"] == "uniklab run --memory"
    assert main(["config", "path"]) == 0
    assert capsys.readouterr().out == f"{config_file}\n"


def test_show_names_the_file_or_the_variable(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text('[run]\nmemory = "256M"\nvcpus = 2\n\n[bake]\nroot = "initramfs"\n')
    monkeypatch.setenv("UNIKLAB_RUN_VCPUS", "3")
    settings = _settings(capsys)
    memory = settings["run.memory"]
    assert (memory["value"], memory["source"], memory["origin"]) == (
        "256M",
        "file",
        str(config_file),
    )
    assert (settings["run.vcpus"]["value"], settings["run.vcpus"]["source"]) == (3, "env")
    assert settings["run.vcpus"]["origin"] == "UNIKLAB_RUN_VCPUS"
    assert (settings["bake.root"]["value"], settings["bake.root"]["source"]) == (
        "initramfs",
        "file",
    )
    assert settings["run.host"]["source"] == "default"
    assert main(["config", "show"]) == 0
    table = capsys.readouterr().out
    assert f"config file: {config_file}\n" in table
    assert [ln.split()[:3] for ln in table.splitlines() if ln.startswith("run.")][:2] == [
        ["run.memory", "256M", str(config_file)],
        ["run.vcpus", "3", "$UNIKLAB_RUN_VCPUS"],
    ]


def test_uniklab_config_names_the_file(
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_file.write_text("[run]\nvcpus = 2\n")
    other = tmp_path / "other.toml"
    other.write_text("[run]\nvcpus = 4\n")
    monkeypatch.setenv("UNIKLAB_CONFIG", str(other))
    settings = _settings(capsys)
    assert settings["run.vcpus"]["value"] == 4 and settings["run.vcpus"]["origin"] == str(other)
    assert main(["config", "path"]) == 0
    assert capsys.readouterr().out == f"{other}\n"
    monkeypatch.setenv("UNIKLAB_CONFIG", str(tmp_path / "missing.toml"))
    err = _error(capsys, "config", "show")
    assert f"UNIKLAB_CONFIG={tmp_path / 'missing.toml'}: no such file" in err
    # ... and every verb whose defaults it would give says so
    assert "UNIKLAB_CONFIG=" in _error(capsys, "run", "redis")


def test_help_shows_the_effective_default(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def memory_help() -> str:
        capsys.readouterr()
        assert main(["run", "--help"]) == 0
        out = capsys.readouterr().out
        return " ".join(out.split("--memory", 1)[1].split("--vcpus")[0].split())

    assert "[default:" not in memory_help()  # the image's
    config_file.write_text('[run]\nmemory = "256M"\n')
    assert "[default: 256M]" in memory_help()
    monkeypatch.setenv("UNIKLAB_RUN_MEMORY", "300M")
    assert "[default: 300M]" in memory_help()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[run]\ncolour = 1\n", "run.colour: unknown key"),
        ("[nope]\nx = 1\n", "nope: unknown key"),
        ('[run]\nvcpus = "many"\n', "run.vcpus: Input should be a valid integer"),
        ("[run]\nvcpus = 0\n", "run.vcpus: invalid vCPU count 0"),
        ('[run]\nmemory = "lots"\n', "run.memory: invalid memory size 'lots'"),
        ("[run]\ntimeout = -1\n", "run.timeout: invalid timeout -1"),
        ('[run]\nhost = "Bad Host"\n', "run.host: invalid host name"),
        ('[bake]\nroot = "ext4"\n', "bake.root: Input should be 'initramfs' or 'erofs'"),
        ('[bake]\nkernel = "vmlinuz"\n', "bake.kernel: 'vmlinuz': host, specialised"),
        ("[run]\nvcpus = 2\nmemory 128\n", "not valid TOML: Expected '=' after a key"),
    ],
)
def test_a_bad_file_is_one_line_naming_file_and_key(
    config_file: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    config_file.write_text(text)
    for argv in (["config", "show"], ["run", "redis"], ["bake", "redis"]):
        err = _error(capsys, *argv)
        assert err.startswith(f"error: {config_file}: ") and expected in err, err
    if "TOML" in expected:
        assert "(at line 3, column 8)" in err
    # Verbs with no configured defaults do not read it: a broken file leaves them working.
    assert main(["ps", "--json"]) == 0


def test_a_bad_variable_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIKLAB_RUN_WAIT", "maybe")
    err = _error(capsys, "run", "redis")
    assert err.startswith("error: UNIKLAB_RUN_WAIT (run.wait): Input should be a valid boolean")


def test_precedence_option_env_file_default(
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Which kernel `bake` takes (a kernel file is baked as it is: the manifest names it)."""
    kernels = {}
    for who in ("file", "env", "option"):
        kernels[who] = tmp_path / f"{who}-vmlinuz"
        kernels[who].write_text(f"not really a kernel ({who})")  # each bakes anew

    def baked_kernel(*options: str) -> object:
        made = cli_json(capsys, "bake", "--binary", "/bin/true", *options)
        assert isinstance(made, dict)
        return made["kernel"]["source"]

    config_file.write_text(f'[bake]\nkernel = "{kernels["file"]}"\n')
    assert baked_kernel() == str(kernels["file"])
    monkeypatch.setenv("UNIKLAB_BAKE_KERNEL", str(kernels["env"]))
    assert baked_kernel() == str(kernels["env"])
    assert baked_kernel("--kernel", str(kernels["option"])) == str(kernels["option"])


@pytest.mark.e2e
def test_run_takes_the_configured_memory_and_vcpus(
    lab_home: Path,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_file.write_text('[run]\nmemory = "160M"\nvcpus = 2\n')
    assert main(["run", "redis", "--name", "from-file"]) == 0
    monkeypatch.setenv("UNIKLAB_RUN_MEMORY", "176M")
    assert main(["run", "redis", "--name", "from-env"]) == 0
    assert main(["run", "redis", "--name", "from-option", "-m", "144M", "--vcpus", "1"]) == 0
    rows = cli_json(capsys, "ps")
    assert isinstance(rows, list)
    got = {r["name"]: (r["memory_mb"], r["vcpus"]) for r in rows}
    assert got == {"from-file": (160, 2), "from-env": (176, 2), "from-option": (144, 1)}
    assert main(["destroy", "--all"]) == 0


def test_every_variable_is_in_the_readme() -> None:
    """Each UNIKLAB_* variable the code (src, tests, bench) names has a line in the
    README's "Environment variables" table; so has each option default's."""
    from uniklab import config

    root = Path(__file__).resolve().parents[2]
    table = (root / "README.md").read_text().split("### Environment variables", 1)[1]
    table = table.split("\n###", 1)[0]
    named = {s.env for s in config.SETTINGS} | {config.ENV_FILE}
    for folder in ("src", "tests", "bench"):
        for file in (root / folder).rglob("*.py"):
            named |= set(re.findall(r"\b_?UNIKLAB_[A-Z0-9_]*[A-Z0-9]\b", file.read_text()))
    named.discard("UNIKLAB_VERB_KEY")  # the pattern, in docstrings
    assert sorted(v for v in named if f"`{v}`" not in table) == []
