"""One run vocabulary: every face builds the same ``RunOptions``, checked once, when made."""

from __future__ import annotations

import inspect

import pytest

import uniklab
from uniklab.api import Client
from uniklab.errors import UsageError
from uniklab.net.attach import NicRequest
from uniklab.options import RunFields, RunOptions
from uniklab.testing import spec
from uniklab.testing.pytest_plugin import UnikernelFactory


def test_fields_are_normalised_once() -> None:
    o = RunOptions(memory="128M", net="lab,ip=10.77.0.20/24", env={"A": "1"}, args=["-x"])
    assert o.memory_mb == 128 and o.nets == (NicRequest("lab", ip="10.77.0.20/24"),)
    assert o.args == ("-x",) and o.env == {"A": "1"} and o.timeout == 120.0
    assert RunOptions(publish=[(0, 6379), [8080, 80]]).publish == ((0, 6379), (8080, 80))


@pytest.mark.parametrize(("fields", "message"), [
    ({"memory": "lots"}, "memory"),
    ({"vcpus": 0}, "vCPU count"),
    ({"restart": "always"}, "invalid restart policy 'always'"),
    ({"args": "--port 1"}, "args is a list of arguments"),
    ({"publish": [(1, 2, 3)]}, "invalid port mapping"),
    ({"net": "lab", "publish": [(1, 2)]}, "not with --net"),
    ({"net": "lab,speed=fast"}, "invalid --net option"),
    ({"name": "bad name"}, "instance name"),
    ({"host": "no host!"}, "host name"),
    ({"timeout": -1}, "readiness timeout"),
])  # fmt: skip
def test_a_bad_field_is_one_line_when_made(fields: RunFields, message: str) -> None:
    with pytest.raises(UsageError, match=message) as exc:
        RunOptions(**fields)
    assert "\n" not in str(exc.value)


def test_every_face_takes_the_same_fields() -> None:
    """The API's, the plugin's and the spec's keywords are RunOptions' own fields."""
    fields = set(RunFields.__annotations__)
    assert fields == {f for f in inspect.signature(RunOptions).parameters}
    for fn in (uniklab.run, Client.run, UnikernelFactory.__call__):
        params = inspect.signature(fn).parameters
        assert "options" in params and any(p.kind is p.VAR_KEYWORD for p in params.values())
    decl = spec.parse(
        '[[instances]]\nname = "r"\nimage = "redis"\nhost = "auto"\nrestart = "on-failure"\n'
        'memory = "64M"\n[[tests]]\nname = "t"\ncommand = ["true"]\n',
        "t.toml",
    ).instances[0]
    assert decl.options(name="r-1") == RunOptions(
        name="r-1", memory=64, host="auto", restart="on-failure"
    )


def test_a_spec_with_a_bad_option_is_refused_when_loaded() -> None:
    with pytest.raises(UsageError, match="restart"):
        spec.parse(
            '[[instances]]\nname = "r"\nimage = "redis"\nrestart = "sometimes"\n'
            '[[tests]]\nname = "t"\ncommand = ["true"]\n',
            "t.toml",
        )
