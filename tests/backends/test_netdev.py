"""The byte counters of a guest's NICs, from the host ends' lines of /proc/net/dev (a
QEMU's taps, a dom0's vifs): parsed, picked, and turned to the guest's view."""

from __future__ import annotations

from pathlib import Path

from uniklab.backends import netdev
from uniklab.backends.xen import is_vif_of

# /proc/net/dev of a dom0 with two domains (3: two vifs, 13: one).
DOM0 = (Path(__file__).parents[1] / "fixtures" / "netdev" / "dom0.txt").read_text()


def test_parse() -> None:
    found = netdev.parse(DOM0)
    assert set(found) == {"lo", "eth0", "xenbr0", "vif3.0", "vif3.1", "vif13.0"}
    assert found["vif3.0"] == netdev.Counters(rx_bytes=4512, tx_bytes=61734)


def test_guest_view_swaps_directions_and_sums_nics() -> None:
    found = netdev.parse(DOM0)
    # What dom0's vif end sent, the guest received.
    assert netdev.guest_bytes(found, lambda n: is_vif_of(3, n)) == (61734 + 200, 4512 + 100)
    assert netdev.guest_bytes(found, lambda n: is_vif_of(13, n)) == (88888, 99999)
    assert netdev.guest_bytes(found, lambda n: is_vif_of(1, n)) is None
    assert netdev.guest_bytes(found, ["eth0"]) == (113422, 1893311)
    assert netdev.guest_bytes(found, ["ukt-gone"]) is None


def test_this_machines_file_parses() -> None:
    text = Path("/proc/self/net/dev").read_text()
    assert "lo" in netdev.parse(text)


def test_garbage_is_ignored() -> None:
    assert netdev.parse("") == {}
    assert netdev.parse("eth0: x y z\nnot a line\nlo: 1 2 3\n") == {}
