"""End-to-end tests of the guest init: boot the Debian kernel under QEMU (microvm, TCG) with
a throwaway initramfs (init + test payload) and check behaviour from the console log."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from uniklab.guest.config import GuestConfig, Nic
from uniklab.guest.console import control_line

if TYPE_CHECKING:
    from tests.guest.conftest import GuestFactory

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MAC = "52:54:00:12:34:56"


def test_dhcp_args_env_hostname_and_exit_status(guests: GuestFactory) -> None:
    cfg = GuestConfig(
        name="r1",
        args=["--x", "two words", "caf\u00e9 \U0001f600"],
        env={"K": "V", "HOME": "/root"},
        net=[Nic(mac=MAC)],
        dns=["192.0.2.53"],
    )
    g = guests.boot(cfg, image={"env": {"HOME": "/", "PAYLOAD_MODE": "3"}})
    g.wait_for(r"^uniklab-init: app exited status 3$", 150)
    assert g.wait_exit(60) == 0
    out = g.text()
    assert "uniklab-init: start" in out
    assert f"uniklab-init: net eth0 {MAC} 10.0.2.15/24 via dhcp gw 10.0.2.2" in out
    assert "uniklab-init: ready-to-exec uptime=" in out
    assert "uniklab-init: exec /bin/payload first arg --x two words caf\u00e9 \U0001f600" in out
    argv = ["/bin/payload", "first arg", "--x", "two words", "caf\u00e9 \U0001f600"]
    for i, arg in enumerate(argv):
        assert f"payload: argv[{i}]=<{arg}>" in out
    assert "payload: env <HOME=/root>" in out  # config env overrides image env
    assert "payload: env <K=V>" in out
    assert "payload: env <PATH=/bin:/usr/bin:/sbin>" in out
    assert "payload: hostname <r1> cwd </>" in out
    assert "payload: resolv nameserver 192.0.2.53" in out
    assert "payload: resolv nameserver 10.0.2.3" in out  # from DHCP option 6
    assert "fatal" not in out


def test_pid1_forwards_term_to_the_app_while_keeping_a_lease(guests: GuestFactory) -> None:
    """PID 1 waits on a signalfd and the DHCP client's timer (slirp leases for a day)."""
    cfg = GuestConfig(net=[Nic(mac=MAC)], clock="none")
    g = guests.boot(cfg, image={"env": {"PAYLOAD_MODE": "term-init"}})
    g.wait_for(r"^uniklab-init: app killed by signal 15$", 150)
    assert g.wait_exit(60) == 0
    assert f"uniklab-init: net eth0 {MAC} 10.0.2.15/24 via dhcp" in g.text()


def test_a_stop_line_on_the_console_terms_then_kills_the_app(guests: GuestFactory) -> None:
    """The host's graceful stop (guest/ctl.h): SIGTERM, and SIGKILL at the deadline for an
    app that ignores it; a line that is not the protocol's is ignored."""
    g = guests.boot(
        None, net=False, console_socket=True, image={"env": {"PAYLOAD_MODE": "ignore-term"}}
    )
    g.wait_for(r"^payload: ignoring SIGTERM", 150)
    g.tell(b"hello\n" + control_line("stop", "1"), until=r"app killed by signal 9")
    assert g.wait_exit(60) == 0
    out = g.text()
    assert "uniklab-init: stop requested: SIGTERM to the app, SIGKILL in 1 s" in out
    assert "uniklab-init: stop: the app did not end in time: SIGKILL" in out
    assert "unknown control line" not in out


def test_run_as_poweroff_the_init_has_pid1_end_the_app(guests: GuestFactory) -> None:
    """Xen's `xl shutdown` makes the guest kernel run /sbin/poweroff: the init again."""
    g = guests.boot(
        None,
        net=False,
        image={"env": {"PAYLOAD_MODE": "poweroff"}},
        extra_files={"sbin/poweroff": guests.init},
    )
    g.wait_for(r"^uniklab-init: app killed by signal 15$", 150)
    assert g.wait_exit(60) == 0


def test_static_address_serves_and_clock_is_set(guests: GuestFactory) -> None:
    cfg = GuestConfig(net=[Nic(mac=MAC, dhcp=False, addr="10.0.2.15/24", gw="10.0.2.2")])
    g = guests.boot(cfg)
    try:
        g.wait_for(r"^payload: listening$", 150)
        out = g.text()
        assert f"uniklab-init: net eth0 {MAC} 10.0.2.15/24 via static gw 10.0.2.2" in out
        assert "uniklab-init: clock set from rtc (waited" in out
        assert "payload: hostname <uniklab>" in out
        skews = []
        for _ in range(5):
            t0, guest_ns, t1 = g.query_time()
            skews.append(guest_ns / 1e9 - (t0 + t1) / 2)
            time.sleep(0.1)
        # QEMU's emulated RTC lags the host by the fraction of a second it had when QEMU
        # created it, so the tick-synced clock is within 1 s, not better (see init.c).
        assert all(abs(s) < 1.1 for s in skews), skews
        g.query_time(b"q")
        assert g.wait_exit(60) == 0
        g.wait_for(r"^uniklab-init: app exited status 0$", 5)
    finally:
        g.kill()


def test_no_config_uses_defaults(guests: GuestFactory) -> None:
    g = guests.boot(None, image={"env": {"PAYLOAD_MODE": "0"}}, net=False)
    g.wait_for(r"^uniklab-init: app exited status 0$", 150)
    assert g.wait_exit(60) == 0
    out = g.text()
    assert "no uniklab.config on the kernel command line" in out
    assert "payload: argv[1]=<first arg>" in out
    assert "payload: argv[2]" not in out
    assert "uniklab-init: net " not in out


@pytest.mark.parametrize(
    ("append", "message"),
    [
        ("uniklab.config=!!!", "not valid base64url"),
        ("uniklab.config=eyJ2IjoxLCJuYW1lIjo", "invalid JSON"),  # '{"v":1,"name":' cut
        ("uniklab.config=eyJ2IjoyfQ", "unsupported version"),  # {"v":2}
    ],
)
def test_bad_config_is_fatal_and_ends_the_vm(
    guests: GuestFactory, append: str, message: str
) -> None:
    g = guests.boot(None, net=False, extra_append=append)
    g.wait_for(rf"^uniklab-init: fatal: bad config: .*{message}", 150)
    assert g.wait_exit(60) == 0
    assert "uniklab-init: exec" not in g.text()


def test_missing_interface_is_fatal(guests: GuestFactory) -> None:
    cfg = GuestConfig(net=[Nic(mac="52:54:00:99:99:99")], clock="none")
    g = guests.boot(cfg)
    g.wait_for(r"^uniklab-init: fatal: no network interface with MAC 52:54:00:99:99:99", 150)
    assert g.wait_exit(60) == 0
