"""Recipes: how to bake one application, kept as TOML data files.

Built-in recipes live in ``uniklab/recipes/*.toml``; a user can point ``bake`` at their own
file.  Everything a recipe names is validated here, before any work starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from uniklab import validate
from uniklab.errors import BakeError, NotFoundError, UsageError

T = TypeVar("T")


def _checked(fn: Callable[..., T], *args: object) -> T:
    """Run a ``validate`` function inside a pydantic validator (UsageError -> ValueError)."""
    try:
        return fn(*args)
    except UsageError as exc:
        raise ValueError(str(exc)) from None


class ProbeSpec(BaseModel):
    """How to tell that the application is ready."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["tcp", "redis", "http", "memcached", "console"] = "tcp"
    port: int | None = None
    path: str = "/"
    status: int = 200
    marker: str | None = None  # regex on the console, for kind = "console"

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        return None if v is None else _checked(validate.port, v)


class FileSpec(BaseModel):
    """An extra file in the image: copied from the host (src) or written from content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dest: str
    src: str | None = None
    content: str | None = None
    mode: int = 0o644

    @field_validator("dest")
    @classmethod
    def _dest(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not p.is_absolute() or ".." in p.parts:
            raise ValueError(f"file destination must be absolute and stay in the image: {v!r}")
        return str(p)


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    binary: str
    install_as: str | None = None
    package: str | None = None  # Debian package that provides the binary, for hints
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/"
    ports: list[int] = Field(default_factory=list)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    memory: str = "128M"
    modules: list[str] = Field(default_factory=list)
    libs: list[str] = Field(default_factory=list)
    files: list[FileSpec] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _checked(validate.name, v, "recipe name")

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        return [_checked(validate.port, p) for p in v]

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        _checked(validate.memory_mb, v)
        return v

    @property
    def image_binary_path(self) -> str:
        return self.install_as or f"/bin/{PurePosixPath(self.binary).name}"

    @property
    def probe_port(self) -> int | None:
        if self.probe.port is not None:
            return self.probe.port
        return self.ports[0] if self.ports else None


def builtin_names() -> list[str]:
    pkg = resources.files("uniklab.recipes")
    return sorted(p.name[:-5] for p in pkg.iterdir() if p.name.endswith(".toml"))


def parse(text: str, origin: str) -> Recipe:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BakeError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "recipe"
        raise BakeError(f"{origin}: {where}: {first['msg']}") from exc


def load(ref: str) -> tuple[Recipe, Path | None]:
    """A built-in recipe by name, or a recipe file by path; returns it and its directory."""
    if ref.endswith(".toml") or "/" in ref:
        path = Path(ref)
        if not path.is_file():
            raise NotFoundError(f"no recipe file {ref}")
        return parse(path.read_text(), str(path)), path.resolve().parent
    if ref in builtin_names():
        text = resources.files("uniklab.recipes").joinpath(f"{ref}.toml").read_text()
        return parse(text, f"built-in recipe {ref}"), None
    validate.name(ref, "recipe name")
    raise NotFoundError(
        f"no recipe named {ref!r} (built-in: {', '.join(builtin_names())}; or give a .toml path)"
    )
