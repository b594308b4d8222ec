"""The ``uniklab test`` spec: networks, instances and host-side test commands, in TOML.

    [[instances]]
    name = "redis"
    image = "redis"
    memory = "128M"

    [[tests]]
    name = "ping"
    command = ["redis-cli", "-h", "${REDIS_HOST}", "-p", "${REDIS_PORT}", "ping"]
    expect_stdout = "PONG"

Unknown keys are errors (a typo must not pass silently).
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from uniklab import validate
from uniklab.errors import NotFoundError, UsageError
from uniklab.options import RunOptions

# Short enough that "<name>-<6 hex>" is still a valid instance name.
DeclName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkDecl(_Model):
    """A bridged network created for the run and removed after it (needs root)."""

    name: DeclName
    subnet: str | None = None
    bridge: str | None = None
    netns: str | None = None
    dhcp: bool = True


class InstanceDecl(_Model):
    name: DeclName
    # A recipe (a built-in name such as redis, or a *.toml file), baked for the run under a
    # tag of its own, or an image with its tag (redis:latest), run as it is.
    image: str
    memory: str | int | None = None
    vcpus: int = Field(default=1, ge=1, le=64)
    nets: list[str] = Field(default_factory=list)  # NET[,mac=M][,ip=CIDR][,gw=IP]
    publish: list[str] = Field(default_factory=list)  # HOST:GUEST
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)
    timeout: float = Field(default=120.0, gt=0)  # seconds to be ready
    host: str = "local"  # an inventory host, or "auto"
    restart: str = "no"
    channels: list[int] = Field(default_factory=list)  # guest ports over channels
    # OTHER:PORT[:LOCAL], OTHER an instance declared before this one (its [[instances]] name)
    links: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _options(self) -> InstanceDecl:
        validate.in_model(self.options)  # every run option checked when the spec loads
        return self

    def options(
        self, *, name: str | None = None, labels: dict[str, str] | None = None
    ) -> RunOptions:
        """This instance's run options, in the vocabulary every face shares.  ``name``
        (``<decl name><suffix>``): its links name their peers with the same suffix."""
        suffix = name.removeprefix(self.name) if name else ""
        return RunOptions(
            name=name,
            memory=self.memory,
            vcpus=self.vcpus,
            publish=[validate.publish(p) for p in self.publish],
            env=self.env,
            args=self.args,
            labels=labels or {},
            net=self.nets or None,
            host=self.host,
            restart=self.restart,
            timeout=self.timeout,
            channels=self.channels,
            links=[link.replace(":", f"{suffix}:", 1) for link in self.links],
        )

    @property
    def env_prefix(self) -> str:
        """REDIS for redis, MY_CACHE for my-cache: the prefix of its variables."""
        return self.name.upper().replace("-", "_")


class TestDecl(_Model):
    name: str = Field(min_length=1, max_length=200)
    # argv list, or a string split like a shell would (no shell runs it); ${VAR} expands
    command: list[str] | str
    timeout: float = Field(default=60.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None  # relative to the spec file's directory (the default)
    netns: str | None = None  # run the command inside this network namespace
    expect_stdout: str | None = None  # also fail unless stdout contains this

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    @model_validator(mode="after")
    def _non_empty(self) -> TestDecl:
        if not self.argv:
            raise ValueError(f"test {self.name!r}: empty command")
        return self


class Spec(_Model):
    name: str | None = None  # the JUnit suite name (default: the file's stem)
    networks: list[NetworkDecl] = Field(default_factory=list)
    instances: list[InstanceDecl] = Field(default_factory=list)
    tests: list[TestDecl] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Spec:
        for what, names in (
            ("network", [n.name for n in self.networks]),
            ("instance", [i.name for i in self.instances]),
            ("test", [t.name for t in self.tests]),
        ):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"duplicate {what} name(s): {', '.join(sorted(dup))}")
        prefixes = [i.env_prefix for i in self.instances]
        clash = {p for p in prefixes if prefixes.count(p) > 1}
        if clash:
            raise ValueError(f"instance names clash as variables: {', '.join(sorted(clash))}")
        for i, inst in enumerate(self.instances):
            before = {d.name for d in self.instances[:i]}
            for link in inst.links:
                if link.split(":", 1)[0] not in before:
                    raise ValueError(
                        f"instance {inst.name}: link {link}: not an instance declared before it"
                    )
        return self


def parse(text: str, origin: str) -> Spec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"{origin}: {problems}") from exc


def load(path: Path) -> Spec:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise NotFoundError(f"no spec file {path}") from exc
    return parse(text, str(path))
