"""What the Xen backend tells a guest's uniklab-vchan (its channel list), how a link's
host-side target names the other domain, and the dom0's proxy keeper (its shell, run here
with stand-ins for uniklab-vchan --listen and xenstore-read; the real ones run in
tests/backends/test_xen_channels.py) (uniklab.backends.xen_channels)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from uniklab import daemons
from uniklab.backends.xen_channels import (
    XenLink,
    channel_list,
    link_of,
    list_proxies,
    start,
    stop,
    vchan_path,
)
from uniklab.channels import socket_path
from uniklab.errors import UsageError
from uniklab.executor import LocalExecutor


def test_channel_list_serves_ports_to_dom0_and_listens_for_links() -> None:
    assert channel_list([6379, 80]) == "6379:0 80:0"
    link = XenLink(16379, "master", 6379)
    assert channel_list([6379], [(link, 7)]) == "6379:0 16379>7/6379"
    assert channel_list([]) == ""


def test_vchan_path_is_per_port_and_peer() -> None:
    assert vchan_path(5, 6379) == "/local/domain/5/data/vchan/6379/0"
    assert vchan_path(5, 6379, 9) == "/local/domain/5/data/vchan/6379/9"


def test_link_target_names_the_other_instance_and_its_port() -> None:
    assert link_of(16379, "/srv/ukl/run/master/chan-6379.sock") == XenLink(16379, "master", 6379)
    with pytest.raises(UsageError, match="not an instance's channel socket"):
        link_of(16379, "/srv/ukl/run/master/qmp.sock")


def test_a_links_peer_names_the_other_instance_first() -> None:
    sock = "/srv/ukl/run/old/chan-1.sock"
    assert link_of(16379, sock, "master:6379") == XenLink(16379, "master", 6379)
    with pytest.raises(UsageError, match="not OTHER:PORT"):
        link_of(16379, None, "master")


# -- the dom0's proxy keeper, run here by sh with stand-ins for the dom0's commands ------
_FAKE_PROXY = """\
#!{python}
# uniklab-vchan --listen SOCK DOMID PATH as seen from its socket: it serves one client (a
# greeting, as a vchan would answer), then exits, as if it had crashed.
import socket, sys
assert sys.argv[1] == "--listen" and sys.argv[3] == "5", sys.argv
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[2])
s.listen(1)
c, _ = s.accept()
c.sendall(b"hi")
c.close()
sys.exit(1)
"""


@pytest.fixture
def fake_dom0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with ``xenstore-read``/``-write`` (domain 5 is there while ``tmp_path/alive``
    is), and ``bin/fake-vchan`` (above)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fake-vchan").write_text(_FAKE_PROXY.format(python=sys.executable))
    alive = tmp_path / "alive"
    alive.touch()
    (bin_dir / "xenstore-read").write_text(f'#!/bin/sh\n[ -e "{alive}" ]\n')
    (bin_dir / "xenstore-write").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path


def _helper(fake_dom0: Path) -> str:
    return str(fake_dom0 / "bin" / "fake-vchan")


def _greeting(sock: Path, timeout: float = 20.0) -> bytes:
    """What a client reads from ``sock``, once it accepts (the keeper may be between two
    proxies; a client queued on a proxy that exits is reset, as with Xen's)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout)
                s.connect(str(sock))
                return s.recv(10)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_dom0_proxy_is_started_again_until_the_domain_goes(fake_dom0: Path) -> None:
    ex = LocalExecutor()
    rundir = fake_dom0 / "run"
    rundir.mkdir()
    start(ex, owner="o", name="g", domid=5, ports=[6379], rundir=rundir, helper=_helper(fake_dom0))
    sock = socket_path(rundir, 6379)
    (keeper,) = list_proxies(ex, f"{rundir}/")
    assert keeper[1] == str(sock)
    # Each client gets a proxy, though the one before it exited.
    assert [_greeting(sock) for _ in range(3)] == [b"hi"] * 3
    assert list_proxies(ex, f"{rundir}/") == [keeper]
    # The domain gone, the proxy's exit ends the keeper, and its socket goes with it (a
    # proxy may have started before: its client ends it).
    (fake_dom0 / "alive").unlink()
    with contextlib.suppress(OSError):
        _greeting(sock, timeout=2)
    deadline = time.monotonic() + 20
    while list_proxies(ex, f"{rundir}/") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list_proxies(ex, f"{rundir}/") == []
    assert not sock.exists()


def test_stop_ends_the_keeper_and_its_proxy(fake_dom0: Path) -> None:
    ex = LocalExecutor()
    rundir = fake_dom0 / "run"
    rundir.mkdir()
    start(
        ex, owner="o", name="g", domid=5, ports=[6379, 80], rundir=rundir, helper=_helper(fake_dom0)
    )
    assert len(list_proxies(ex, f"{rundir}/")) == 2
    stop(ex, owner="o", name="g", rundir=rundir)
    deadline = time.monotonic() + 20
    while daemons.scan("fake-vchan", str(rundir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemons.scan("fake-vchan", str(rundir)) == []
    assert list(rundir.glob("chan-*.sock")) == []
