"""What the Xen backend tells a guest's uniklab-vchan (its channel list) and how a link's
host-side target names the other domain (uniklab.backends.xen_channels)."""

from __future__ import annotations

import pytest

from uniklab.backends.xen_channels import XenLink, channel_list, link_of, vchan_path
from uniklab.errors import UsageError


def test_channel_list_serves_ports_to_dom0_and_listens_for_links() -> None:
    assert channel_list([6379, 80]) == "6379:0 80:0"
    link = XenLink(16379, "master", 6379)
    assert channel_list([6379], [(link, 7)]) == "6379:0 16379>7/6379"
    assert channel_list([]) == ""


def test_vchan_path_is_per_port_and_peer() -> None:
    assert vchan_path(5, 6379) == "/local/domain/5/data/vchan/6379/0"
    assert vchan_path(5, 6379, 9) == "/local/domain/5/data/vchan/6379/9"


def test_link_target_names_the_other_instance_and_its_port() -> None:
    assert link_of(16379, "/home/u/run/master/chan-6379.sock") == XenLink(16379, "master", 6379)
    with pytest.raises(UsageError, match="not an instance's channel socket"):
        link_of(16379, "/home/u/run/master/qmp.sock")


def test_a_links_peer_names_the_other_instance_first() -> None:
    sock = "/home/u/run/old/chan-1.sock"
    assert link_of(16379, sock, "master:6379") == XenLink(16379, "master", 6379)
    with pytest.raises(UsageError, match="not OTHER:PORT"):
        link_of(16379, None, "master")


def test_a_guest_with_channels_keeps_its_config_but_for_channels() -> None:
    from uniklab.backends.xen import _guest_cmdline
    from uniklab.guest.config import GuestConfig

    line = f"console=hvc0 quiet {GuestConfig(name='g', args=['--x']).encode()}"
    assert _guest_cmdline(line, ()) == line
    kept = _guest_cmdline(line, (6379,)).split(" ")
    assert kept[:2] == ["console=hvc0", "quiet"]
    cfg = GuestConfig.decode(kept[2])
    assert cfg.name == "g" and cfg.args == ["--x"]
    assert not getattr(cfg, "channels", None)
