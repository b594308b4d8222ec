from __future__ import annotations

import ipaddress
from pathlib import Path

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
