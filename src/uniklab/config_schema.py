"""The configuration file's schema (pydantic, unknown keys refused, like a recipe's) and
the parsing of the file and of the ``UNIKLAB_<VERB>_<KEY>`` variables with it.

Imported by ``uniklab.config`` only when there is a file or a variable to read.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from uniklab import validate
from uniklab.config import SETTINGS, Setting
from uniklab.errors import UsageError


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Timed(_Table):
    timeout: float | None = None  # seconds

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        return None if v is None else validate.in_model(validate.timeout, v)


class RunDefaults(_Timed):
    """``[run]``: defaults of ``uniklab run``'s options."""

    memory: str | int | None = None  # "128M", "1G" or MiB; unset: the image's
    vcpus: int | None = None
    host: str | None = None  # an inventory host, or "auto"
    wait: bool | None = None
    # timeout: seconds to wait for readiness

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | int | None) -> str | None:
        if v is None:
            return None
        validate.in_model(validate.memory_mb, v)
        return v if isinstance(v, str) else f"{v}M"

    @field_validator("vcpus")
    @classmethod
    def _vcpus(cls, v: int | None) -> int | None:
        return None if v is None else validate.in_model(validate.vcpus, v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return v
        return validate.in_model(validate.name, v, "host name")


class BakeDefaults(_Table):
    """``[bake]``: defaults of ``uniklab bake``'s options."""

    kernel: str | None = None  # host, specialised[:PROFILE] or an absolute kernel file
    root: Literal["initramfs", "erofs"] | None = None

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v: str | None) -> str | None:
        if v is None or v == "host" or v == "specialised" or v.startswith("specialised:"):
            return v
        file = Path(v).expanduser()
        # Relative to what? Neither the file's directory nor each command's: refused.
        if not file.is_absolute():
            raise ValueError(f"{v!r}: host, specialised[:PROFILE] or an absolute kernel file")
        if not file.is_file():
            raise ValueError(f"{v!r}: no such kernel file")
        return str(file)


class CheckDefaults(_Timed):
    """``[check]``: defaults of ``uniklab check``'s options (timeout: of the probe)."""


class ConfigFile(_Table):
    run: RunDefaults = RunDefaults()
    bake: BakeDefaults = BakeDefaults()
    check: CheckDefaults = CheckDefaults()


def _values(doc: ConfigFile) -> dict[Setting, object]:
    tables = doc.model_dump(exclude_none=True)
    return {s: tables[s.verb][s.key] for s in SETTINGS if s.key in tables.get(s.verb, {})}


def parse_file(file: Path) -> dict[Setting, object]:
    """The settings ``file`` makes; a problem is one line naming the file and the key."""
    try:
        data: dict[str, Any] = tomllib.loads(file.read_text())
    except OSError as exc:
        raise UsageError(f"{file}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file}: not valid TOML: {exc}") from exc
    try:
        return _values(ConfigFile.model_validate(data))
    except ValidationError as exc:
        raise UsageError(f"{file}: {validate.first_problem(exc, 'config')}") from exc


def parse_env(setting: Setting, raw: str) -> object:
    """``setting``'s value from its environment variable (text, converted as pydantic does
    in lax mode: "2" is 2, "yes" is true)."""
    try:
        doc = ConfigFile.model_validate({setting.verb: {setting.key: raw}})
    except ValidationError as exc:
        where, _, problem = validate.first_problem(exc, setting.dotted).partition(": ")
        raise UsageError(f"{setting.env} ({where}): {problem}") from exc
    return _values(doc)[setting]
