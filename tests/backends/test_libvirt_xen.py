"""libvirt's Xen (libxl) driver on the virtual Xen host: `lab up --libvirt` runs libvirtd in
the dom0 and registers the lab twice, as xl's host XEN and as libvirt's host XEN-libvirt
(xen+libssh://, the lab's key and known_hosts).  Redis as a PV domain created through
libvirt, on xenbr0 with the runbook's MAC and DHCP, its address found by MAC on the dom0,
PING through an SSH tunnel, `virsh list` showing it, destroy leaving nothing; the same
image through xl beside it for the figures; the backend contract.

The lab boots once for the module (the slow part under TCG); each test leaves it empty."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.backends.contract import BackendContract, Target
from tests.support.xenlab import emptied_after, virtual_xen_home
from uniklab.backends import libvirt as lv
from uniklab.backends.base import owner_tag
from uniklab.cli.main import main
from uniklab.lab import Lab, RunOptions
from uniklab.state.store import InstanceRow

pytestmark = [pytest.mark.e2e, pytest.mark.root]

XEN = "lvxen"
LIBVIRT = f"{XEN}-libvirt"
MAC = "00:11:22:33:44:55"


@pytest.fixture(scope="module")
def lvxen_home(image_home: Path) -> Iterator[Path]:
    with virtual_xen_home(image_home, XEN, "--libvirt") as path:
        yield path


@pytest.fixture
def lab_home(lvxen_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("UNIKLAB_HOME", str(lvxen_home))
    with emptied_after(lvxen_home) as path:
        yield path


@pytest.fixture
def uri(lab: Lab) -> str:
    found = lab.hosts.get(LIBVIRT).libvirt
    assert found is not None
    return found


def virsh(uri: str, *argv: str) -> str:
    r = subprocess.run(["virsh", "-c", uri, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def domains(uri: str, *flags: str) -> list[str]:
    return virsh(uri, "list", "--name", *flags).split()


def _ping(lab: Lab, name: str) -> None:
    ep = lab.endpoint(lab.get(name), 6379)
    r = redis.Redis(ep.host, ep.port, socket_timeout=10)
    assert r.ping() and r.set("foo", "bar") and r.get("foo") == b"bar"


def test_redis_through_libvirts_xen_driver(lab: Lab, uri: str) -> None:
    assert "Xen driver" in lab.backend_on(lab.hosts.get(LIBVIRT)).facts().detail
    start = time.monotonic()
    argv = ["run", "redis", "--host", LIBVIRT, "--name", "lvr", "--memory", "128M"]
    assert main([*argv, "--net", "xenbr0", "--mac", MAC, "--wait"]) == 0
    ready = time.monotonic() - start
    _ping(lab, "lvr")
    pong = time.monotonic() - start
    row = lab.store.instance("lvr")
    assert (row.backend, row.host) == ("libvirt", LIBVIRT)
    # Everyone with virsh sees it, and whose it is.
    assert domains(uri) == ["Domain-0", "lvr"]
    meta = virsh(uri, "metadata", "lvr", lv.libvirt_xml.NS)
    assert f"<owner>{owner_tag(lab.paths.run)}</owner>" in meta
    xml = virsh(uri, "dumpxml", "lvr")
    assert "<domain type='xen'" in xml and f"<mac address='{MAC}'/>" in xml
    info = lab.ip("lvr")
    assert info.source == f"dhcp lease on {LIBVIRT}" and info.host.startswith("10.99.0.")
    assert "uniklab-init: exec /bin/redis-server" in lab.logs("lvr")
    start = time.monotonic()
    assert main(["destroy", "lvr"]) == 0
    destroy_s = time.monotonic() - start
    assert domains(uri, "--all") == ["Domain-0"] and lab.store.instances() == []
    # The same image through xl on the same host, for the figures.
    start = time.monotonic()
    argv = ["run", "redis", "--host", XEN, "--name", "xlr", "--memory", "128M"]
    assert main([*argv, "--net", "xenbr0", "--mac", MAC, "--wait"]) == 0
    xl_ready = time.monotonic() - start
    _ping(lab, "xlr")
    xl_pong = time.monotonic() - start
    assert main(["destroy", "xlr"]) == 0
    print(
        f"run->ready {ready:.1f}s, ->PONG {pong:.1f}s via libvirt (images uploaded: first run);"
        f" via xl {xl_ready:.1f}s / {xl_pong:.1f}s; libvirt destroy {destroy_s:.2f}s"
    )


def test_a_second_run_reuses_the_volumes(lab: Lab, uri: str) -> None:
    # Ready before the next one boots: two TCG guests booting at once would skew the figure.
    argv = ["run", "redis", "--host", LIBVIRT, "--name", "v1", "--memory", "128M", "--wait"]
    assert main(argv) == 0
    volumes = virsh(uri, "vol-list", lv.POOL)
    start = time.monotonic()
    view = lab.run("redis", RunOptions(host=LIBVIRT, name="v2", memory="128M", wait=True))
    again = time.monotonic() - start
    _ping(lab, "v2")
    assert virsh(uri, "vol-list", lv.POOL) == volumes
    assert view.row.attachments[0].bridge == "xenbr0"  # the default bridge, as xl's
    for name in ("v1", "v2"):
        lab.destroy(name)
    assert domains(uri, "--all") == ["Domain-0"]
    # xl's run with its copy of the image there too.
    start = time.monotonic()
    lab.run("redis", RunOptions(host=XEN, name="x2", memory="128M", wait=True))
    xl_again = time.monotonic() - start
    lab.destroy("x2")
    print(f"run->ready, the image on the host: via libvirt {again:.1f}s, via xl {xl_again:.1f}s")


class TestLibvirtXenContract(BackendContract):
    @pytest.fixture
    def target(self, lab: Lab, uri: str) -> Target:
        def destroy(lab: Lab, row: InstanceRow) -> None:
            virsh(uri, "destroy", str(row.runtime["domain"]))

        return Target(lab, RunOptions(host=LIBVIRT, memory="128M"), destroy)
