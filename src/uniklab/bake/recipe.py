"""Recipes: how to bake one application, kept as TOML data files.

Built-in recipes live in ``uniklab/recipes/*.toml``; a user can point ``bake`` at their own
file, or bake a bare binary (``from_binary``).  Everything a recipe names is checked here,
before any work starts, and every mistake is one line naming the key at fault.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from uniklab import validate
from uniklab.errors import BakeError, NotFoundError, UsageError

# The guest init mounts fresh filesystems here, hiding whatever the image puts below them.
MOUNTED = ("/dev", "/proc", "/sys", "/tmp", "/run")
# Paths the baker writes itself; a recipe says what goes there through other keys.
RESERVED = ("/init", "/uniklab", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
ACCOUNT_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Linux's MAX_ARG_STRLEN: execve refuses a longer argument or environment string.
MAX_ARG_STRLEN = 131072


def _c_string(v: str, what: str) -> str:
    """A string the init passes to execve: no NUL (C strings end there), not too long."""
    if "\0" in v:
        raise ValueError(f"{what} {validate.short(v)} contains a NUL byte")
    if len(v.encode()) >= MAX_ARG_STRLEN:
        raise ValueError(f"{what} of {len(v.encode())} bytes is longer than execve takes")
    return v


def _image_path(v: str, what: str) -> str:
    """An absolute path inside the image, normalised; not hidden by a mount, not reserved."""
    p = PurePosixPath(v)
    if not v or not p.is_absolute() or ".." in p.parts or "\0" in v:
        raise ValueError(f"{what} must be an absolute path that stays in the image: {v!r}")
    norm = str(p)
    if norm == "/":
        raise ValueError(f"{what} cannot be the image root")
    for top in MOUNTED:
        if norm == top or norm.startswith(top + "/"):
            raise ValueError(f"{what} {norm} is hidden at boot: the guest mounts {top} over it")
    for res in RESERVED:
        if norm == res or norm.startswith(res + "/"):
            raise ValueError(f"{what} {norm} is written by the baker itself")
    return norm


def _mode(v: int) -> int:
    if not 0 <= v <= 0o7777:
        raise ValueError(f"mode {v:#o} is not a permission mode (0 to 0o7777)")
    return v


class ProbeSpec(BaseModel):
    """How to tell that the application is ready."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["tcp", "redis", "http", "memcached", "console"] = "tcp"
    port: int | None = None
    path: str = "/"  # for kind = "http"
    status: int = 200  # for kind = "http"
    marker: str | None = None  # regex on the console, for kind = "console"

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        return None if v is None else validate.in_model(validate.port, v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v):
            raise ValueError(f"http probe path must start with '/' and have no spaces: {v!r}")
        return v

    @field_validator("status")
    @classmethod
    def _status(cls, v: int) -> int:
        if not 100 <= v <= 599:
            raise ValueError(f"http status {v} is not an HTTP status code (100-599)")
        return v

    @field_validator("marker")
    @classmethod
    def _marker(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"console marker is not a regular expression: {exc}") from None
        return v


class FileSpec(BaseModel):
    """An extra file in the image, written from ``content`` or copied from ``src``.

    A relative ``src`` is taken from the recipe's directory and must stay in it; an
    absolute ``src`` (a host file such as /etc/mime.types) only in built-in recipes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dest: str
    src: str | None = None
    content: str | None = None
    mode: int = 0o644

    @field_validator("dest")
    @classmethod
    def _dest(cls, v: str) -> str:
        return _image_path(v, "file destination")

    @field_validator("src")
    @classmethod
    def _src(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = PurePosixPath(v)
        if not v or "\0" in v or (not p.is_absolute() and ".." in p.parts):
            raise ValueError(f"file source {v!r} escapes the recipe's directory")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: int) -> int:
        return _mode(v)

    @model_validator(mode="after")
    def _one_source(self) -> FileSpec:
        if (self.src is None) == (self.content is None):
            raise ValueError(f"file {self.dest}: give exactly one of src or content")
        return self


class DirSpec(BaseModel):
    """An empty directory in the image (a log, cache or document directory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    mode: int = 0o755

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _image_path(v, "directory")

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: int) -> int:
        return _mode(v)


class UserSpec(BaseModel):
    """An account in the image's /etc/passwd, for an app that switches to it itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    uid: int
    gid: int | None = None  # default: a group of the user's name with gid = uid
    home: str = "/nonexistent"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ACCOUNT_RE.match(v):
            raise ValueError(f"invalid user name {v!r}: a-z, 0-9, '_', '-', up to 32")
        return v

    @field_validator("uid", "gid")
    @classmethod
    def _id(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65534:
            raise ValueError(f"id {v} out of range: between 1 and 65534 (0 is root)")
        return v


class GroupSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    gid: int
    members: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ACCOUNT_RE.match(v):
            raise ValueError(f"invalid group name {v!r}: a-z, 0-9, '_', '-', up to 32")
        return v

    @field_validator("gid")
    @classmethod
    def _gid(cls, v: int) -> int:
        if not 1 <= v <= 65534:
            raise ValueError(f"gid {v} out of range: between 1 and 65534 (0 is root)")
        return v


class BuildSpec(BaseModel):
    """Build the app from a Debian source package (see ``uniklab.bake.source``).

    ``command`` runs in the unpacked source (an argv list, no shell; ``{jobs}`` becomes the
    number of CPUs) and must leave ``output``, a path relative to the source tree.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    debian_source: str
    command: list[str]
    output: str
    compiler: str = "musl-gcc"  # its version is part of the build's cache key

    @field_validator("debian_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9+.-]+$", v):
            raise ValueError(f"invalid Debian source package name {v!r}")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v or not v[0]:
            raise ValueError("build command must be a non-empty argv list")
        for a in v:
            _c_string(a, "build argument")
        return v

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts or "\0" in v or p.name in ("", "."):
            raise ValueError(f"build output must be a file path inside the source tree: {v!r}")
        return str(p)

    @field_validator("compiler")
    @classmethod
    def _compiler(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.+-]+$", v):
            raise ValueError(f"invalid compiler name {v!r}")
        return v


RumprunTarget = Literal["hw_virtio", "xen_pv"]
RUMPRUN_TARGETS: tuple[RumprunTarget, ...] = ("hw_virtio", "xen_pv")


class RumprunDisk(BaseModel):
    """A disk image the package's build leaves (relative to its directory), mounted at boot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    src: str
    mount: str

    @field_validator("src")
    @classmethod
    def _src(cls, v: str) -> str:
        return _relative(v, "disk src")

    @field_validator("mount")
    @classmethod
    def _mount(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not p.is_absolute() or ".." in p.parts or str(p) == "/" or re.search(r"[\s\"\\]", v):
            raise ValueError(f"mount point must be an absolute path without spaces: {v!r}")
        return str(p)


class RumprunSpec(BaseModel):
    """Build the app with the rumprun toolchain, then ``rumprun-bake`` it.

    Either a rumprun-packages ``package``: its own Makefile runs in
    ``rumprun-packages/<package>`` with the toolchain on PATH, the pinned sources it would
    download (``downloads``, names of uniklab's pins) put in its ``dl/`` first.  Or a
    Debian ``debian_source``: unpacked with Debian's patches (less ``drop_patches``), the
    ``shims`` (C files beside the recipe, for what rumprun's libc lacks) compiled into
    objects that ``{shims}`` in ``command`` names, then ``command`` (an argv, ``{jobs}``:
    the CPUs).  ``binary`` and ``disks`` are what the build leaves, relative to its tree.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    package: str | None = None
    debian_source: str | None = None
    command: list[str] = Field(default_factory=list)  # with debian_source
    drop_patches: list[str] = Field(default_factory=list)  # debian/patches/ to un-apply
    shims: list[str] = Field(default_factory=list)
    make: list[str] = Field(default_factory=list)  # targets; none: the Makefile's default
    downloads: list[str] = Field(default_factory=list)
    binary: str
    disks: list[RumprunDisk] = Field(default_factory=list)
    targets: list[RumprunTarget] = Field(default_factory=lambda: list(RUMPRUN_TARGETS))

    @field_validator("package", "debian_source")
    @classmethod
    def _package(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", v):
            raise ValueError(f"invalid package name {v!r}")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        for a in v:
            _c_string(a, "build argument")
        return v

    @field_validator("drop_patches", "shims")
    @classmethod
    def _files(cls, v: list[str]) -> list[str]:
        return [_relative(f, "file") for f in v]

    @model_validator(mode="after")
    def _one_source(self) -> RumprunSpec:
        if (self.package is None) == (self.debian_source is None):
            raise ValueError("give exactly one of package (rumprun-packages) or debian_source")
        if self.debian_source is not None and not self.command:
            raise ValueError("debian_source needs a command (the build's argv)")
        if self.package is not None and (self.command or self.drop_patches or self.shims):
            raise ValueError("command, drop_patches and shims go with debian_source")
        return self

    @field_validator("make")
    @classmethod
    def _make(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.match(r"^[A-Za-z0-9_./=+-]+$", t) or t.startswith("-"):
                raise ValueError(f"invalid make target {t!r}")
        return v

    @field_validator("binary")
    @classmethod
    def _binary(cls, v: str) -> str:
        return _relative(v, "binary")

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[RumprunTarget]) -> list[RumprunTarget]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"targets: give each of {', '.join(RUMPRUN_TARGETS)} at most once")
        return v


def _relative(v: str, what: str) -> str:
    p = PurePosixPath(v)
    if not v or p.is_absolute() or ".." in p.parts or "\0" in v or p.name in ("", "."):
        raise ValueError(f"{what} must be a file path inside the package: {v!r}")
    return str(p)


# Keys that shape a Linux image's root; a rumprun image has none (the app is the kernel).
LINUX_ONLY = ("install_as", "modules", "libs", "files", "dirs", "users", "groups", "docroot")


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    kind: Literal["linux", "rumprun"] = "linux"
    rumprun: RumprunSpec | None = None  # kind = "rumprun": how to build and bake it
    binary: str | None = None  # a host binary, or:
    build: BuildSpec | None = None  # built from source
    install_as: str | None = None
    package: str | None = None  # Debian package that provides the binary, for hints
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/"
    ports: list[int] = Field(default_factory=list)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    memory: str = "128M"
    min_memory: str | None = None  # the smallest memory it was seen to work with
    modules: list[str] = Field(default_factory=list)
    libs: list[str] = Field(default_factory=list)
    files: list[FileSpec] = Field(default_factory=list)
    dirs: list[DirSpec] = Field(default_factory=list)
    users: list[UserSpec] = Field(default_factory=list)
    groups: list[GroupSpec] = Field(default_factory=list)
    docroot: str | None = None  # a web server's document root
    page: str | None = None  # written to <docroot>/index.html

    @model_validator(mode="before")
    @classmethod
    def _default_probe(cls, data: Any) -> Any:
        # Without ports there is nothing to connect to: ready is the init's exec line.
        if isinstance(data, dict) and "probe" not in data and not data.get("ports"):
            return {**data, "probe": {"kind": "console"}}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate.in_model(validate.name, v, "recipe name")

    @field_validator("binary")
    @classmethod
    def _binary(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = PurePosixPath(v)
        if not p.is_absolute() or ".." in p.parts:
            raise ValueError(f"binary must be an absolute host path: {v!r}")
        return v

    @field_validator("install_as")
    @classmethod
    def _install_as(cls, v: str | None) -> str | None:
        return None if v is None else _image_path(v, "install_as")

    @field_validator("package")
    @classmethod
    def _package(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z0-9][a-z0-9+.-]+$", v):
            raise ValueError(f"invalid Debian package name {v!r}")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, val in v.items():
            if not ENV_NAME_RE.match(key):
                raise ValueError(f"invalid environment variable name {validate.short(key)}")
            _c_string(f"{key}={val}", "environment setting")
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for a in v:
            _c_string(a, "argument")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not p.is_absolute() or ".." in p.parts:
            raise ValueError(f"workdir must be an absolute path in the image: {v!r}")
        return str(p)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        ports = [validate.in_model(validate.port, p) for p in v]
        dup = sorted({p for p in ports if ports.count(p) > 1})
        if dup:
            raise ValueError(f"port {dup[0]} listed twice")
        return ports

    @field_validator("memory", "min_memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None:
            validate.in_model(validate.memory_mb, v)
        return v

    @field_validator("modules")
    @classmethod
    def _modules(cls, v: list[str]) -> list[str]:
        for m in v:
            if not re.match(r"^[A-Za-z0-9_-]+$", m):
                raise ValueError(f"invalid kernel module name {m!r}")
        return v

    @field_validator("libs")
    @classmethod
    def _libs(cls, v: list[str]) -> list[str]:
        for lib in v:
            p = PurePosixPath(lib)
            if not lib or ".." in p.parts or ("/" in lib and not p.is_absolute()):
                raise ValueError(
                    f"library {lib!r}: give a soname (libfoo.so.1) or an absolute path"
                )
        return v

    @field_validator("dirs", mode="before")
    @classmethod
    def _dirs(cls, v: Any) -> Any:
        # A plain path is a directory with the default mode.
        return [{"path": d} if isinstance(d, str) else d for d in v] if isinstance(v, list) else v

    @field_validator("docroot")
    @classmethod
    def _docroot(cls, v: str | None) -> str | None:
        return None if v is None else _image_path(v, "docroot")

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.kind == "rumprun":
            return self._rumprun_consistent()
        if self.rumprun is not None:
            raise ValueError('[rumprun] goes with kind = "rumprun"')
        if (self.binary is None) == (self.build is None):
            raise ValueError("give exactly one of binary (a host path) or [build]")
        if self.probe.kind != "console":
            port = self.probe_port
            if port is None:
                raise ValueError(f"probe {self.probe.kind} needs a port (probe.port or ports)")
            if self.ports and port not in self.ports:
                raise ValueError(f"probe port {port} is not one of ports {self.ports}")
        if self.min_memory is not None and validate.memory_mb(self.min_memory) > validate.memory_mb(
            self.memory
        ):
            raise ValueError(f"min_memory {self.min_memory} is more than memory {self.memory}")
        if self.page is not None and self.docroot is None:
            raise ValueError("page needs a docroot to go in")
        dests = [f.dest for f in self.files]
        if self.page is not None and self.docroot is not None:
            dests.append(str(PurePosixPath(self.docroot) / "index.html"))
        dests.append(self.image_binary_path)
        dup = sorted({d for d in dests if dests.count(d) > 1})
        if dup:
            raise ValueError(f"{dup[0]} is written twice (files, page or install_as)")
        users = [u.name for u in self.users]
        groups = [g.name for g in self.groups]
        for what, names in (("user", users), ("group", groups)):
            taken = {"root", *[n for i, n in enumerate(names) if n in names[:i]]}
            clash = [n for n in names if n in taken]
            if clash:
                raise ValueError(f"{what} {clash[0]!r} declared twice (or is root)")
        uids = [u.uid for u in self.users]
        if len(set(uids)) != len(uids):
            raise ValueError("two users share a uid")
        gids = [g.gid for g in self.groups]
        if len(set(gids)) != len(gids):
            raise ValueError("two groups share a gid")
        for g in self.groups:
            for member in g.members:
                if member not in users:
                    raise ValueError(f"group {g.name}: member {member!r} is not a declared user")
        return self

    def _rumprun_consistent(self) -> Recipe:
        if self.rumprun is None:
            raise ValueError('kind = "rumprun" needs a [rumprun] table')
        if self.binary is not None or self.build is not None:
            raise ValueError('kind = "rumprun" builds with [rumprun], not binary or [build]')
        given = [k for k in LINUX_ONLY if getattr(self, k)]
        if given or self.workdir != "/" or self.page is not None:
            key = given[0] if given else ("workdir" if self.workdir != "/" else "page")
            raise ValueError(f"{key}: a rumprun image has no root filesystem to shape")
        if self.probe.kind != "console" and self.probe_port is None:
            raise ValueError(f"probe {self.probe.kind} needs a port (probe.port or ports)")
        return self

    @property
    def image_binary_path(self) -> str:
        return self.install_as or f"/bin/{PurePosixPath(self.source_path).name}"

    @property
    def source_path(self) -> str:
        """The host binary, or the build's output path in its source tree."""
        if self.rumprun is not None:
            return self.rumprun.binary
        if self.build is not None:
            return self.build.output
        return self.binary or ""

    def installed(self) -> bool:
        """Whether the host has what baking needs (a build from source fetches it)."""
        return self.binary is None or Path(self.binary).exists()

    @property
    def probe_port(self) -> int | None:
        if self.probe.port is not None:
            return self.probe.port
        return self.ports[0] if self.ports else None

    def passwd(self) -> str:
        lines = ["root:x:0:0:root:/:/bin/false"]
        for u in self.users:
            gid = u.gid if u.gid is not None else u.uid
            lines.append(f"{u.name}:x:{u.uid}:{gid}:{u.name}:{u.home}:/bin/false")
        return "\n".join(lines) + "\n"

    def group(self) -> str:
        """/etc/group: root, the declared groups, and a private group per user that needs one."""
        lines = ["root:x:0:"]
        gids = {g.gid for g in self.groups}
        names = {g.name for g in self.groups}
        for g in self.groups:
            lines.append(f"{g.name}:x:{g.gid}:{','.join(g.members)}")
        for u in self.users:
            gid = u.gid if u.gid is not None else u.uid
            if gid not in gids and u.name not in names:
                lines.append(f"{u.name}:x:{gid}:")
                gids.add(gid)
        return "\n".join(lines) + "\n"


def builtin_names() -> list[str]:
    pkg = resources.files("uniklab.recipes")
    return sorted(p.name[:-5] for p in pkg.iterdir() if p.name.endswith(".toml"))


def builtin_dir() -> Path:
    """Where the built-in recipes live: relative ``src`` files of built-ins are taken here."""
    return Path(str(resources.files("uniklab.recipes")))


def parse(text: str, origin: str, *, builtin: bool = False) -> Recipe:
    """Parse and validate a recipe; every problem is one BakeError line naming the key."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BakeError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        rec = Recipe.model_validate(data)
    except ValidationError as exc:
        raise BakeError(f"{origin}: {validate.first_problem(exc, 'recipe')}") from exc
    if not builtin:
        for i, f in enumerate(rec.files):
            if f.src is not None and PurePosixPath(f.src).is_absolute():
                raise BakeError(
                    f"{origin}: files.{i}.src: host path {f.src} is only allowed in built-in "
                    "recipes; copy the file next to your recipe and name it relative"
                )
    return rec


def from_binary(
    binary: str,
    *,
    port: int | None = None,
    name: str | None = None,
    args: list[str] | None = None,
    memory: str = "128M",
) -> Recipe:
    """A recipe synthesized from a bare binary: ready when it accepts TCP on ``port``."""
    try:
        path = Path(binary)
        if not path.is_absolute():
            path = path.absolute()
        found = path.is_file()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long
        raise UsageError(f"--binary {validate.short(binary)}: {exc}") from None
    if not found:
        raise NotFoundError(f"no binary {validate.short(binary)}")
    rec_name = name or re.sub(r"[^a-z0-9_.-]", "-", path.name.lower()).lstrip("-._")
    data: dict[str, Any] = {
        "name": rec_name,
        "description": f"baked from {path}",
        "binary": str(path),
        "args": args or [],
        "memory": memory,
        "ports": [port] if port is not None else [],
        "probe": {"kind": "tcp", "port": port} if port is not None else {"kind": "console"},
    }
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"--binary {binary}: {validate.first_problem(exc, 'recipe')}") from exc


def load(ref: str) -> tuple[Recipe, Path | None]:
    """A built-in recipe by name, or a recipe file by path; returns it and its directory.

    The directory is None for a built-in (its relative files come from ``builtin_dir``).
    """
    if ref.endswith(".toml") or "/" in ref:
        path = Path(ref)
        if not path.is_file():
            raise NotFoundError(f"no recipe file {ref}")
        return parse(path.read_text(), str(path)), path.resolve().parent
    if ref in builtin_names():
        text = resources.files("uniklab.recipes").joinpath(f"{ref}.toml").read_text()
        return parse(text, f"built-in recipe {ref}", builtin=True), None
    validate.name(ref, "recipe name")
    raise NotFoundError(
        f"no recipe named {ref!r} (built-in: {', '.join(builtin_names())}; or give a .toml path)"
    )
