"""The guest init keeps its DHCP lease while the app runs (RFC 2131 4.4.5), against a
scripted server (``fakelan.py``) with 6-second leases: renew with the server at T1, rebind
with anyone at T2, and on a NAK or at expiry give the address up and start over."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.guest.fakelan import (
    ACK,
    BROADCAST_MAC,
    DISCOVER,
    NAK,
    OFFER,
    REQUEST,
    SERVER_IP,
    SERVER_MAC,
    FakeLan,
    Handler,
    Message,
    Reply,
)
from uniklab.guest.config import GuestConfig, Nic

if TYPE_CHECKING:
    from tests.guest.conftest import GuestFactory

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAC = "52:54:00:12:34:56"
LEASE, T1, T2 = 6, 2, 4
# How much shorter than the guest's own an interval may look here: the host stamps each
# message when it arrives, and a guest starved of CPU (TCG, the suite's other guests)
# delivers the one that starts the interval late (CI: a renewal 0.6 s late made T2 look
# like 3.4 s).  Still short of every wrong timer: a rebind at T2 - T1, a renewal at once.
EARLY = 1.0
A, B, C = "10.0.3.15", "10.0.3.16", "10.0.3.17"


class Script:
    """The server's side: each phase answers (or ignores) the guest until it moves on."""

    def __init__(self) -> None:
        self.phase = "boot"
        self.acked: dict[str, Message] = {}  # phase -> the request it acknowledged

    def _ack(
        self, m: Message, addr: str, then: str, lease: int = LEASE, timers: bool = True
    ) -> Reply:
        self.acked[self.phase] = m
        self.phase = then
        return Reply(ACK, addr, lease, T1 if timers else None, T2 if timers else None)

    def __call__(self, m: Message) -> Reply | None:
        requested = m.options.get(50, b"")
        p = self.phase
        if p == "boot" and m.type == DISCOVER:
            return Reply(OFFER, A, LEASE, T1, T2)
        if p == "boot" and m.type == REQUEST and requested == bytes([10, 0, 3, 15]):
            return self._ack(m, A, "renew")
        if p == "renew" and m.type == REQUEST and m.ciaddr == A:
            return self._ack(m, A, "rebind")
        if p == "rebind" and m.type == REQUEST and m.ip_dst == "255.255.255.255":
            return self._ack(m, A, "nak")  # the unicast renewals before it go unanswered
        if p == "nak" and m.type == REQUEST and m.ciaddr == A:
            self.phase = "rediscover"
            return Reply(NAK)
        if p == "rediscover" and m.type == DISCOVER:
            return Reply(OFFER, B, LEASE, T1, T2)
        if p == "rediscover" and m.type == REQUEST and requested == bytes([10, 0, 3, 16]):
            return self._ack(m, B, "silent")
        if p == "silent" and m.type == DISCOVER:  # the renewals were ignored: it expired
            self.phase = "last"
            self.acked["expired"] = m
            return Reply(OFFER, C, 3600)
        if p == "last" and m.type == REQUEST and requested == bytes([10, 0, 3, 17]):
            return self._ack(m, C, "done", 3600, timers=False)
        return None


@pytest.fixture
def fake_lan() -> Iterator[Callable[[Handler], FakeLan]]:
    made: list[FakeLan] = []

    def make(handler: Handler) -> FakeLan:
        made.append(FakeLan(handler))
        return made[-1]

    yield make
    for lan in made:
        lan.close()


def _no_requested_ip_or_server(m: Message) -> bool:
    return 50 not in m.options and 54 not in m.options


def test_lease_is_renewed_rebound_and_given_up_on_nak_and_expiry(
    guests: GuestFactory, fake_lan: Callable[[Handler], FakeLan]
) -> None:
    script = Script()
    lan = fake_lan(script)
    cfg = GuestConfig(net=[Nic(mac=MAC)], clock="none")
    # The app lives 40 s: long enough for the whole story, then its exit must still be seen.
    image = {"env": {"PAYLOAD_MODE": "7", "PAYLOAD_SLEEP": "40"}}
    g = guests.boot(cfg, image=image, netdev=lan.netdev)
    g.wait_for(rf"^uniklab-init: net eth0 {MAC} {A}/24 via dhcp gw {SERVER_IP}$", 150)
    boot = script.acked["boot"]

    # T1: a renewal unicast to the server, from the leased address (RFC 2131 4.3.2).
    renew = lan.wait_for(lambda m: m.ciaddr == A, "renewal", 30)
    assert (renew.ip_src, renew.ip_dst, renew.eth_dst) == (A, SERVER_IP, SERVER_MAC)
    assert _no_requested_ip_or_server(renew) and renew.flags == 0
    assert T1 - EARLY <= renew.at - boot.at <= T1 + 3, renew.at - boot.at
    g.wait_for(rf"^uniklab-init: net eth0 lease {A} renewed for {LEASE} s$", 30)

    # Unanswered until T2, then broadcast to any server (REBINDING), which answers.
    rebind = lan.wait_for(lambda m: m.ip_dst == "255.255.255.255" and m.ciaddr == A, "rebind", 30)
    assert rebind.eth_dst == BROADCAST_MAC and rebind.ip_src == A
    assert _no_requested_ip_or_server(rebind)
    ignored = [m for m in lan.messages if renew.at < m.at < rebind.at]
    assert ignored and all(m.ip_dst == SERVER_IP for m in ignored), ignored
    assert T2 - EARLY <= rebind.at - script.acked["renew"].at <= T2 + 3

    # A NAK: the address goes at once, and discovery starts over.
    g.wait_for(
        rf"^uniklab-init: net eth0 lease {A} refused \(DHCPNAK\): address removed, "
        r"rediscovering$",
        30,
    )
    g.wait_for(rf"^uniklab-init: net eth0 {MAC} {B}/24 via dhcp gw {SERVER_IP}$", 30)
    after_nak = lan.wait_for(lambda m: m.type == DISCOVER and m.at > rebind.at, "DISCOVER", 5)
    assert (after_nak.ciaddr, after_nak.ip_src) == ("0.0.0.0", "0.0.0.0")

    # Silence: renew, rebind, then at expiry the address goes and discovery starts over.
    g.wait_for(rf"^uniklab-init: net eth0 lease {B} expired: address removed, rediscovering$", 30)
    g.wait_for(rf"^uniklab-init: net eth0 {MAC} {C}/24 via dhcp gw {SERVER_IP}$", 30)
    got_b = script.acked["rediscover"]
    silent = [m.ip_dst for m in lan.messages if got_b.at < m.at < script.acked["expired"].at]
    assert silent[0] == SERVER_IP and silent[-1] == "255.255.255.255", silent
    assert script.acked["expired"].at - got_b.at >= LEASE - EARLY

    # Only the address in force answers ARP: the lost ones were removed.
    assert lan.holds(C)
    assert not lan.holds(A, timeout=1.5) and not lan.holds(B, timeout=1.5)

    # All the while PID 1 waited for the app: its exit ends the VM as always.
    g.wait_for(r"^uniklab-init: app exited status 7$", 60)
    assert g.wait_exit(60) == 0
    out = g.text()
    assert out.index(f"{C}/24 via dhcp") < out.index("app exited status 7")
    assert "fatal" not in out and "warning: dhcp" not in out
    assert lan.errors == []
    print("\nlease story (s since the boot ACK's request):")
    for m in lan.messages:
        print(f"  {m.at - boot.at:6.2f}  {m.describe()}")


def test_a_lease_with_no_end_is_never_renewed(
    guests: GuestFactory, fake_lan: Callable[[Handler], FakeLan]
) -> None:
    """Option 51 = 0xffffffff (what dnsmasq's "infinite" sends): no renewal, ever."""

    def forever(m: Message) -> Reply | None:
        if m.type == DISCOVER:
            return Reply(OFFER, A, 0xFFFFFFFF)
        # T1 and T2 of a lease with no end mean nothing.
        return Reply(ACK, A, 0xFFFFFFFF, 1, 2) if m.type == REQUEST else None

    lan = fake_lan(forever)
    g = guests.boot(GuestConfig(net=[Nic(mac=MAC)], clock="none"), netdev=lan.netdev)
    g.wait_for(rf"^uniklab-init: net eth0 {MAC} {A}/24 via dhcp gw {SERVER_IP}$", 150)
    count = len(lan.messages)
    time.sleep(5)
    assert len(lan.messages) == count, [m.describe() for m in lan.messages[count:]]
    assert lan.holds(A)
