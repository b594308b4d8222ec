"""The runbook's own unikernel, for real: rumprun-packages' Redis 3.0.6 baked with the
rumprun toolchain (built once per machine from the pinned sources), run under QEMU as
rumprun's launcher runs it, talked to, and destroyed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.homes import make_baked_home
from tests.support.leaks import assert_nothing_left
from uniklab import api
from uniklab.bake.imported import detect_platform
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(45 * 60)]
IMAGE = "rumprun-redis"


@pytest.fixture(scope="module")
def image_home() -> Iterator[Path]:
    """The conftest's lab_home and lab, over a store holding the rumprun image."""
    path = make_baked_home("ukr-img-", IMAGE)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(lab_home: Path) -> Path:
    return lab_home


def test_the_image_holds_both_platforms_and_bakes_again_from_cache(lab: Lab) -> None:
    m = lab.image(f"{IMAGE}:latest")
    assert m.kind == "rumprun" and m.platforms == ["qemu", "xen"]
    assert m.memory == "64M" and m.entrypoint == ["redis-server", "/data/conf/redis.conf"]
    assert detect_platform(lab.images.kernel_path(m, "qemu")) == "qemu"  # multiboot
    assert detect_platform(lab.images.kernel_path(m, "xen")) == "xen"  # __xen_guest
    [disk] = m.disks
    assert disk.mount == "/data" and lab.images.disk_paths(m)[0].stat().st_size == disk.size
    # Debug sections stripped: a few MB, not rumprun-bake's 21 MB.
    assert m.kernel_size < 8 * 2**20
    again = lab.bake(IMAGE)
    assert again.cached and again.manifest.digest == m.digest


def test_run_ping_set_get_destroy_at_the_runbooks_64M(lab: Lab, home: Path) -> None:
    view = lab.run(IMAGE, RunOptions(name="rr"))
    assert view.state == "running" and view.row.memory_mb == 64
    info = lab.ip("rr")
    client = redis.Redis("127.0.0.1", info.ports[0][0], socket_timeout=10, protocol=2)
    assert client.ping() is True
    assert client.set("runbook", "unikernel") and client.get("runbook") == b"unikernel"
    assert client.info()["redis_version"] == "3.0.6"
    logs = lab.logs("rr")
    assert '=== calling "redis-server" main() ===' in logs
    assert "The server is now ready to accept connections on port 6379" in logs
    assert lab.check("rr").ok
    lab.destroy("rr")
    assert_nothing_left(home)


def test_the_apps_exit_ends_the_guest_and_says_why(lab: Lab) -> None:
    """rumprun halts when the app exits; the project's patch makes QEMU exit then."""
    lab.run(IMAGE, RunOptions(name="bad", args=("--port", "notaport"), wait=False))
    deadline = time.monotonic() + 120
    while (row := lab.get("bad").row).state == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert row.state == "crashed", lab.logs("bad")[-2000:]
    assert row.exit_reason == "app exited status 1"


def test_stop_powers_the_guest_off_and_start_runs_it_again(lab: Lab, home: Path) -> None:
    """No init of uniklab's to tell: stop powers the guest off, the exit status unknown."""
    lab.run(IMAGE, RunOptions(name="rs"))
    view = lab.stop("rs", timeout=2)
    assert view.state == "stopped" and view.row.runtime["exit_status"] is None
    assert lab.start("rs").state == "running"
    info = lab.ip("rs")
    assert redis.Redis("127.0.0.1", info.ports[0][0], socket_timeout=10, protocol=2).ping()
    lab.destroy("rs")
    assert_nothing_left(home)


def test_python_api_at_32M(home: Path) -> None:
    with api.run(IMAGE, memory="32M", home=home) as inst:
        r = inst.redis()
        assert r.ping() is True and r.set("k", "v") and r.get("k") == b"v"
    assert_nothing_left(home)


def test_two_nics_are_refused_in_one_line(lab: Lab) -> None:
    from uniklab.errors import UsageError

    with pytest.raises(UsageError, match="one NIC"):
        lab.run(IMAGE, RunOptions(name="two", net=("a", "b"), publish=()))


def test_a_writable_disk_keeps_redis_aof_as_rumprun_b_does(lab: Lab, home: Path) -> None:
    """rumprun-packages' redis README: -b images/datapers.img,/backup (ext2) with AOF
    persistence; what Redis wrote is in the image after the guest is gone."""
    import subprocess

    img = home / "datapers.img"
    subprocess.run(["truncate", "-s", "8M", img], check=True, timeout=30)
    subprocess.run(["mkfs.ext2", "-F", "-q", img], check=True, timeout=60)
    lab.run(
        IMAGE,
        RunOptions(
            name="aof",
            disks=[(str(img), "/backup")],
            args=("--appendonly", "yes", "--dir", "/backup", "--appendfsync", "always"),
        ),
    )
    client = redis.Redis("127.0.0.1", lab.ip("aof").ports[0][0], socket_timeout=10, protocol=2)
    assert client.set("kept", "on-disk")
    lab.destroy("aof")
    listing = subprocess.run(
        ["debugfs", "-R", "cat /appendonly.aof", img], capture_output=True, timeout=30, check=True
    ).stdout
    assert b"kept" in listing and b"on-disk" in listing


def test_a_disk_on_a_linux_image_is_refused_in_one_line(tmp_path: Path) -> None:
    from uniklab.errors import UsageError

    f = tmp_path / "d.img"
    f.write_bytes(b"x")
    lab = Lab(Paths(tmp_path / "h"))
    try:
        lab.bake("redis")
        with pytest.raises(UsageError, match="Linux image"):
            lab.run("redis", RunOptions(disks=[str(f)]))
        assert lab.store.instances() == []
    finally:
        lab.close()


def test_the_linux_images_redis_7_as_a_rumprun_unikernel(home: Path) -> None:
    """rumprun-redis7: Debian's Redis 7.0 source, less its glibc-only patch, with a shim
    for libm's missing llroundl; serves at 40 MB (it hangs at 32)."""
    lab = Lab(Paths(home))
    try:
        m = lab.bake("rumprun-redis7").manifest
        assert m.kind == "rumprun" and m.platforms == ["qemu"]
        lab.run("rumprun-redis7", RunOptions(name="r7", memory="40M"))
        port = lab.ip("r7").ports[0][0]
        client = redis.Redis("127.0.0.1", port, socket_timeout=10, protocol=2)
        info = client.info("server")
        assert info["redis_version"].startswith("7.0.") and info["os"].startswith("NetBSD")
        assert client.set("k", "v") and client.get("k") == b"v"
        assert client.pfadd("hll", "a", "b") and client.pfcount("hll") == 2  # llroundl
        lab.destroy("r7")
        assert_nothing_left(home)
    finally:
        lab.close()
