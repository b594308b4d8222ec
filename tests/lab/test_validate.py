from __future__ import annotations

import socket

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from uniklab import ports, validate
from uniklab.errors import UsageError


@pytest.mark.parametrize(
    "value,mb",
    [
        ("64M", 64),
        ("128m", 128),
        ("1G", 1024),
        ("65536K", 64),
        ("128", 128),
        ("128MiB", 128),
        (256, 256),
    ],
)
def test_memory_ok(value: str | int, mb: int) -> None:
    assert validate.memory_mb(value) == mb


@pytest.mark.parametrize(
    "value",
    ["", "abc", "-1M", "0", "1K", "8M", "1.5G", "100T", "12X", "64 M B", "1e3M", "99999999999M"],
)
def test_memory_bad(value: str) -> None:
    with pytest.raises(UsageError):
        validate.memory_mb(value)


@pytest.mark.parametrize("value", ["r1", "redis", "a", "web-1.test_x", "0abc"])
def test_name_ok(value: str) -> None:
    assert validate.name(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "-x", "a b", "a/b", "../x", "x;rm", "$(id)", "A", "é", "a" * 64, ".hidden", "a\nb"],
)
def test_name_bad(value: str) -> None:
    with pytest.raises(UsageError):
        validate.name(value)


def test_publish() -> None:
    assert validate.publish("6379:6379") == (6379, 6379)
    assert validate.publish("8080") == (0, 8080)
    for bad in ("0:1", "1:70000", "a:b", "1:2:3", ":", ""):
        with pytest.raises(UsageError):
            validate.publish(bad)


def test_mac() -> None:
    assert validate.mac("00:11:22:33:44:55") == "00:11:22:33:44:55"
    assert validate.mac("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    for bad in ("01:00:00:00:00:01", "00:00:00:00:00:00", "zz:11:22:33:44:55", "00:11:22:33:44"):
        with pytest.raises(UsageError):
            validate.mac(bad)


def test_vcpus_and_env() -> None:
    assert validate.vcpus(1) == 1
    for bad in (0, -1, 65):
        with pytest.raises(UsageError):
            validate.vcpus(bad)
    assert validate.env_pair("A=b=c") == ("A", "b=c")
    for bad in ("A", "=x", "1A=x", "A B=x"):
        with pytest.raises(UsageError):
            validate.env_pair(bad)


def test_image_ref() -> None:
    assert validate.image_ref("redis") == ("redis", "latest")
    assert validate.image_ref("redis:v1") == ("redis", "v1")
    for bad in ("Redis", "redis:", "redis:a/b", ":x"):
        if bad == "redis:":
            assert validate.image_ref(bad) == ("redis", "latest")
            continue
        with pytest.raises(UsageError):
            validate.image_ref(bad)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    port: int = 1

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate.in_model(validate.name, v, "thing name")


@pytest.mark.parametrize(
    "data,line",
    [
        ({"name": "Bad Name"}, "name: invalid thing name 'Bad Name'"),
        ({"name": "ok", "colour": 1}, "colour: unknown key"),
        ({"name": "ok", "port": "x"}, "port: Input should be a valid integer"),
        ([], "doc: Input should be a valid dictionary"),
    ],
)
def test_pydantic_problems_are_one_line(data: object, line: str) -> None:
    with pytest.raises(ValidationError) as err:
        _Model.model_validate(data)
    assert validate.first_problem(err.value, "doc").startswith(line)


def test_free_port_is_free() -> None:
    port = ports.free_port()
    assert 1024 <= port <= 65535 and ports.port_free(port)
    with socket.socket() as s:
        s.bind((ports.LOOPBACK, port))
        s.listen()
        assert not ports.port_free(port)
