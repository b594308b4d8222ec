"""The user's configuration: defaults for the CLI's options, from a TOML file and from
environment variables, and where each effective value came from.

A command-line option beats its environment variable (``UNIKLAB_<VERB>_<KEY>``), which
beats the file (``$UNIKLAB_CONFIG``, else ``$XDG_CONFIG_HOME/uniklab/config.toml``), which
beats the built-in default.  The CLI hands the layered values to click as its
``default_map``; the Python API and spec files stay explicit.

Cheap when nothing is configured (every verb with settings pays it): a ``stat`` and a
look at the environment.  tomllib and the schema (pydantic) load only when there is a file
or a variable to read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from uniklab.errors import UsageError

ENV_FILE = "UNIKLAB_CONFIG"


# NamedTuples, not dataclasses: this module is imported by every command (a dataclass
# costs a few hundred microseconds to make).
class Setting(NamedTuple):
    """One configurable default: the option ``--KEY`` of ``uniklab VERB`` (its parameter
    name), ``KEY`` in the file's ``[VERB]`` table, and ``UNIKLAB_VERB_KEY``."""

    verb: str
    key: str

    @property
    def dotted(self) -> str:
        return f"{self.verb}.{self.key}"

    @property
    def env(self) -> str:
        return f"UNIKLAB_{self.verb}_{self.key}".upper()


# What the file may set; its schema (uniklab.config_schema) validates each of them.
SETTINGS = (
    Setting("run", "memory"),
    Setting("run", "vcpus"),
    Setting("run", "host"),
    Setting("run", "wait"),
    Setting("run", "timeout"),
    Setting("bake", "kernel"),
    Setting("bake", "root"),
    Setting("check", "timeout"),
)
VERBS = frozenset(s.verb for s in SETTINGS)  # the verbs whose defaults can be configured

if TYPE_CHECKING:
    Source = Literal["env", "file"]


class Value(NamedTuple):
    """A configured value: from the file (``origin`` its path) or the environment
    (``origin`` the variable's name)."""

    setting: Setting
    value: object
    source: Source
    origin: str


class Config(NamedTuple):
    path: Path  # the file read (it may not exist: then built-in defaults)
    values: Mapping[str, Value] = {}  # by Setting.dotted (never changed)

    def default_map(self) -> dict[str, dict[str, object]]:
        """click's ``default_map`` for the root command: ``{verb: {param: value}}``."""
        out: dict[str, dict[str, object]] = {}
        for v in self.values.values():
            out.setdefault(v.setting.verb, {})[v.setting.key] = v.value
        return out


def path(environ: Mapping[str, str] | None = None) -> Path:
    """The file that is read: ``$UNIKLAB_CONFIG``, else the XDG one (it may not exist)."""
    env = os.environ if environ is None else environ
    named = env.get(ENV_FILE)
    if named:
        return Path(named).expanduser()
    xdg = env.get("XDG_CONFIG_HOME", "")
    # The XDG spec: a relative XDG_CONFIG_HOME is ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"
    return base / "uniklab" / "config.toml"


def load(environ: Mapping[str, str] | None = None) -> Config:
    """The configuration in effect; a bad file or variable is one ``UsageError`` line
    (``FILE: run.memory: ...``, ``UNIKLAB_RUN_MEMORY (run.memory): ...``)."""
    env = os.environ if environ is None else environ
    file = path(env)
    found = file.is_file()
    if env.get(ENV_FILE) and not found:
        raise UsageError(f"{ENV_FILE}={env[ENV_FILE]}: no such file")
    set_in_env = [s for s in SETTINGS if env.get(s.env)]
    if not found and not set_in_env:
        return Config(file)

    from uniklab import config_schema

    values: dict[str, Value] = {}
    if found:
        for s, value in config_schema.parse_file(file).items():
            values[s.dotted] = Value(s, value, "file", str(file))
    for s in set_in_env:
        values[s.dotted] = Value(s, config_schema.parse_env(s, env[s.env]), "env", s.env)
    return Config(file, values)
