from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from uniklab.guest.config import CMDLINE_KEY, GuestConfig, Nic


def test_golden_json() -> None:
    cfg = GuestConfig(
        name="r1",
        args=["--maxmemory", "10mb"],
        env={"A": "b c"},
        net=[Nic(mac="52:54:00:12:34:56")],
        dns=["10.0.2.3"],
    )
    assert cfg.to_json() == (
        '{"v":1,"name":"r1","args":["--maxmemory","10mb"],"env":{"A":"b c"},'
        '"net":[{"mac":"52:54:00:12:34:56","dhcp":true,"addr":null,"gw":null}],'
        '"dns":["10.0.2.3"],"clock":"rtc","timesrc":null}'
    )


def test_encoded_param_has_no_spaces_or_quotes() -> None:
    param = GuestConfig(args=['a b "c"', "ü"]).encode()
    assert param.startswith(CMDLINE_KEY + "=")
    assert not any(ch in param for ch in " \"'\t\n")


@given(
    args=st.lists(st.text(max_size=20), max_size=5),
    env=st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
        st.text(max_size=20),
        max_size=4,
    ),
)
def test_roundtrip(args: list[str], env: dict[str, str]) -> None:
    cfg = GuestConfig(name="x", args=args, env=env)
    assert GuestConfig.decode(cfg.encode()) == cfg


def test_static_nic_needs_address() -> None:
    with pytest.raises(ValidationError):
        Nic(mac="52:54:00:00:00:01", dhcp=False)
    with pytest.raises(ValidationError):
        Nic(mac="52:54:00:00:00:01", dhcp=False, addr="10.0.0.300/24")
    Nic(mac="52:54:00:00:00:01", dhcp=False, addr="10.0.0.3/24", gw="10.0.0.1")


def test_too_large_refused() -> None:
    with pytest.raises(ValueError, match="too large"):
        GuestConfig(args=["x" * 2000]).encode()


def test_unknown_keys_refused() -> None:
    with pytest.raises(ValidationError):
        GuestConfig.model_validate({"v": 1, "bogus": 1})
