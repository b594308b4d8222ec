from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniklab.net import dnsmasq

FIX = Path(__file__).parent.parent / "fixtures" / "xen" / "dnsmasq.leases"


def test_parse_recorded_lease_file() -> None:
    [lease] = dnsmasq.parse_leases(FIX.read_text())
    assert (lease.mac, lease.ip, lease.hostname) == ("00:11:22:33:44:55", "10.99.0.191", "redis")


def test_parse_skips_junk_and_star_hostnames() -> None:
    text = "garbage\n1 AA:BB:CC:DD:EE:FF 10.0.0.9 * *\n2 aa:bb 999.1.1.1 x y\nduid 00:01\n"
    [lease] = dnsmasq.parse_leases(text)
    assert lease.mac == "aa:bb:cc:dd:ee:ff" and lease.hostname is None


def test_pool_leaves_the_lower_half_for_static_use() -> None:
    assert dnsmasq.dhcp_pool(ipaddress.IPv4Network("10.77.0.0/24")) == (
        "10.77.0.127",
        "10.77.0.254",
    )
    start, end = dnsmasq.dhcp_pool(ipaddress.IPv4Network("10.1.0.0/29"))
    assert ipaddress.IPv4Address(start) < ipaddress.IPv4Address(end)


def test_argv_is_dhcp_only_and_bound_to_the_bridge(tmp_path: Path) -> None:
    argv = dnsmasq.build_argv(
        "xenbr0", ipaddress.IPv4Network("10.77.0.0/24"), dnsmasq.DnsmasqFiles(tmp_path)
    )
    assert "--port=0" in argv and "--interface=xenbr0" in argv and "--bind-interfaces" in argv
    assert f"--dhcp-leasefile={tmp_path}/dnsmasq.leases" in argv


@given(st.text(max_size=500))
def test_lease_parser_never_crashes(text: str) -> None:
    for lease in dnsmasq.parse_leases(text):
        ipaddress.IPv4Address(lease.ip)


def test_lease_time_goes_in_the_range_and_is_kept_for_a_restart(tmp_path: Path) -> None:
    files = dnsmasq.DnsmasqFiles(tmp_path)
    net = ipaddress.IPv4Network("10.77.0.0/24")
    assert "--dhcp-range=10.77.0.127,10.77.0.254,255.255.255.0,1h" in dnsmasq.build_argv(
        "xenbr0", net, files
    )
    argv = dnsmasq.build_argv("xenbr0", net, files, "2m")
    assert "--dhcp-range=10.77.0.127,10.77.0.254,255.255.255.0,2m" in argv
    assert dnsmasq.saved_lease_time(files) == "1h"  # nothing saved: the default
    files.lease_time.write_text("2m\n")
    assert dnsmasq.saved_lease_time(files) == "2m"
    files.lease_time.write_text("garbage")
    assert dnsmasq.saved_lease_time(files) == "1h"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2m", 120), ("120", 120), ("120s", 120), ("1h", 3600), ("2d", 172800), ("1w", 604800),
     ("infinite", None)],
)  # fmt: skip
def test_lease_seconds(text: str, seconds: int | None) -> None:
    assert dnsmasq.lease_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [("1m", "out of range"), ("119", "out of range"), ("0", "out of range"),
     ("99999999w", "out of range"), ("", "invalid"), ("2 m", "invalid"), ("-5m", "invalid"),
     ("2mm", "invalid"), ("forever", "invalid")],
)  # fmt: skip
def test_lease_seconds_refuses_what_dnsmasq_would_not_take_as_written(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dnsmasq.lease_seconds(text)
