"""The backend contract (tests/backends/contract.py) on libvirt: a real libvirtd on this
machine (its QEMU driver, TCG here), registered as an inventory host with its URI.  Guests
are transient domains every `virsh list` shows, labelled with their home in <metadata>;
images are volumes of libvirt's storage pool, uploaded once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.backends.contract import BackendContract, Target
from uniklab.backends import libvirt as lv
from uniklab.backends.base import InstanceSpec, owner_tag
from uniklab.cli.main import main
from uniklab.errors import HostUnreachableError, LaunchError
from uniklab.executor import local
from uniklab.lab import Lab, RunOptions
from uniklab.state.store import InstanceRow

pytestmark = [pytest.mark.e2e, pytest.mark.root]

HOST = "lv"


def _virsh(*argv: str) -> str:
    r = subprocess.run(
        ["virsh", "-c", "qemu:///system", *argv], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def _domains(all_: bool = True) -> list[str]:
    return _virsh("list", "--name", *(["--all"] if all_ else [])).split()


def _destroy_behind_our_back(lab: Lab, row: InstanceRow) -> None:
    _virsh("destroy", str(row.runtime["domain"]))


@pytest.fixture
def lv_lab(lab: Lab, libvirtd: str) -> Iterator[Lab]:
    lab.hosts.add(name=HOST, hypervisor="libvirt", libvirt=libvirtd)
    yield lab


class TestLibvirtContract(BackendContract):
    @pytest.fixture
    def target(self, lv_lab: Lab) -> Target:
        return Target(lv_lab, RunOptions(host=HOST, memory="128M"), _destroy_behind_our_back)


def test_runbook_on_libvirt(lv_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    view = lv_lab.run("redis", RunOptions(host=HOST, name="lv-redis", memory="128M", wait=True))
    assert view.row.backend == "libvirt" and "lv-redis" in _domains(all_=False)
    # Everyone in the lab sees whose it is.
    meta = _virsh("metadata", "lv-redis", lv.libvirt_xml.NS)
    assert f"<owner>{owner_tag(lv_lab.paths.run)}</owner>" in meta
    assert "<key>lv-redis</key>" in meta
    host, port = "127.0.0.1", view.forwards[0][0]
    client = redis.Redis(host=host, port=port, protocol=2, socket_timeout=10)
    assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
    volumes = _virsh("vol-list", lv.POOL)
    # A second guest of the same image reuses the volumes uploaded for the first.
    assert main(["run", "redis", "--host", HOST, "--name", "lv-two", "--memory", "128M"]) == 0
    assert _virsh("vol-list", lv.POOL) == volumes
    assert main(["ps"]) == 0
    listing = capsys.readouterr().out
    assert "lv-redis" in listing and "libvirt" in listing
    assert "uniklab-init: exec" in lv_lab.logs("lv-redis")
    lv_lab.destroy("lv-redis")
    assert main(["destroy", "lv-two"]) == 0
    left = [d for d in _domains() if d in ("lv-redis", "lv-two")]
    assert left == [] and lv_lab.store.instances() == []
    assert not Path(f"{lv.CONSOLE_DIR}/lv-redis.console.log").exists()


def test_host_doctor_and_facts(lv_lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["host", "doctor", HOST]) == 0
    out = capsys.readouterr().out
    assert "libvirt 9" in out or "libvirt" in out
    facts = lv_lab.backend_on(lv_lab.hosts.get(HOST)).facts()
    assert facts.free_memory_mb > 0 and "QEMU driver" in facts.detail


def test_a_daemon_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    backend = lv.LibvirtBackend(f"qemu:///system?socket={tmp_path}/none", local, kvm=False)
    with pytest.raises(HostUnreachableError, match=r"libvirtd is not running: start it"):
        backend.facts()


def test_an_image_libvirt_cannot_boot_is_refused_before_any_work(tmp_path: Path) -> None:
    # A kernel specialised for microvm (no ACPI, no PCI): refused before a connection.
    backend = lv.LibvirtBackend(f"qemu:///system?socket={tmp_path}/none", local, kvm=False)
    spec = InstanceSpec(
        name="r",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i",
        cmdline="",
        memory_mb=64,
        vcpus=1,
        rundir=tmp_path / "run" / "1",
        acpi=False,
    )
    with pytest.raises(LaunchError, match="specialised for QEMU's microvm"):
        backend.create(spec)


def test_an_upload_to_a_daemon_that_stops_answering_is_bounded(
    libvirtd: str, tmp_path: Path
) -> None:
    import os
    import signal
    import threading
    import time

    from uniklab.digest import sha256_file

    image = tmp_path / "big.img"
    with image.open("wb") as f:
        f.truncate(1 << 30)  # far more than the socket's buffers
    backend = lv.LibvirtBackend(libvirtd, local, kvm=False)
    pool = backend._pool()
    name = f"sha256-{sha256_file(image)}-stopped"
    daemon = int(Path("/run/libvirtd.pid").read_text().split()[0])
    volume = Path(lv.POOL_DIR) / name
    # The host stops answering as the upload begins (deterministic: not a race with the
    # stream), and answers again 6 s later, well past the upload's 3 s.
    os.kill(daemon, signal.SIGSTOP)
    thaw = threading.Timer(6, os.kill, (daemon, signal.SIGCONT))
    thaw.start()
    start = time.monotonic()
    try:
        with pytest.raises(HostUnreachableError) as err:
            backend._upload(pool, name, image, timeout=3)
    finally:
        thaw.join(40)
        os.kill(daemon, signal.SIGCONT)
    assert time.monotonic() - start < 3 + lv.CLEANUP_WAIT + 10
    assert str(err.value) == (
        f"local (qemu:///system): the upload of big.img ({1 << 30} bytes) did not finish "
        "within 3 s (the host stopped answering)"
    )
    # Undone once the daemon answered again: no half volume stays in the pool.
    pool.refresh(0)
    assert backend._lookup(pool, name) is None and not volume.exists()


def test_a_daemon_that_stops_answering_fails_the_calls_waiting_on_it(libvirtd: str) -> None:
    import os
    import signal

    backend = lv.LibvirtBackend(libvirtd, local, kvm=False, keepalive=(1, 2))
    assert backend.facts().free_memory_mb > 0  # the connection is open
    daemon = int(Path("/run/libvirtd.pid").read_text().split()[0])
    os.kill(daemon, signal.SIGSTOP)
    try:
        # libvirt's keepalive (its event loop runs in a thread) closes the connection.
        with pytest.raises(HostUnreachableError, match=r"the host stopped answering\)$"):
            backend.facts()
        # A new connection to it is bounded too.
        fresh = lv.LibvirtBackend(libvirtd, local, kvm=False)
        with pytest.raises(HostUnreachableError, match="connecting did not finish within"):
            fresh.conn()
    finally:
        os.kill(daemon, signal.SIGCONT)
    assert backend.facts().free_memory_mb > 0  # a new connection once it answers again
