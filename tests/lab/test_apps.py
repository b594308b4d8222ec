"""Apache, nginx and memcached as unikernels, for real: bake, boot (TCG), a real client
request, destroy, nothing left.  Also a server baked straight from its binary."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import cli_json
from tests.support.leaks import assert_nothing_left
from uniklab.bake import recipe
from uniklab.cli.main import main
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

pytestmark = pytest.mark.e2e

APPS = ("apache", "nginx", "memcached")
WAIT = 120.0


def _installed(name: str) -> bool:
    return Path(recipe.load(name)[0].binary).exists()


@pytest.fixture(scope="module")
def image_home() -> Iterator[Path]:
    """Overrides tests/conftest.py's: a store with the app images, shared by this module's
    tests."""
    path = Path(tempfile.mkdtemp(prefix="ukl-apps-", dir="/tmp"))
    lab = Lab(Paths(path))
    try:
        for name in APPS:
            if _installed(name):
                lab.bake(name)
    finally:
        lab.close()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _need(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"{name} is not installed (apt-get install {recipe.load(name)[0].package})")


def _host_port(lab: Lab, name: str) -> int:
    return lab.ip(name).ports[0][0]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _memcached_set_get(port: int, key: str, value: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rwb")
        f.write(f"set {key} 0 0 {len(value)}\r\n{value}\r\nget {key}\r\n".encode())
        f.flush()
        lines = [f.readline() for _ in range(4)]
        return b"".join(lines)


@pytest.mark.parametrize("app", ["apache", "nginx"])
def test_web_server_serves_its_page(app: str, lab: Lab, lab_home: Path) -> None:
    _need(app)
    rec = recipe.load(app)[0]
    view = lab.run(app, RunOptions(name=f"w-{app}", memory=rec.memory, timeout=WAIT))
    assert view.state == "running"
    port = _host_port(lab, f"w-{app}")
    for _ in range(3):  # more than one request: workers that die would show here
        status, body = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and body == rec.page
    assert _get(f"http://127.0.0.1:{port}/no-such-page")[0] == 404
    assert lab.check(f"w-{app}").ok
    logs = lab.logs(f"w-{app}")
    assert '"GET / HTTP/1.1" 200' in logs  # the access log goes to the console
    assert "libgcc_s.so.1 must be installed" not in logs
    lab.destroy(f"w-{app}")
    assert_nothing_left(lab_home)


def test_memcached_set_get(lab: Lab, lab_home: Path) -> None:
    _need("memcached")
    lab.run("memcached", RunOptions(name="mc", timeout=WAIT))
    got = _memcached_set_get(_host_port(lab, "mc"), "greeting", "hello-unikernel")
    assert got == b"STORED\r\nVALUE greeting 0 15\r\nhello-unikernel\r\nEND\r\n"
    assert "uniklab-init: exec /usr/bin/memcached -u memcache" in lab.logs("mc")
    lab.destroy("mc")
    assert_nothing_left(lab_home)


def test_cli_bake_binary_run_and_recipes(
    lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """uniklab bake --binary: a recipe synthesized from the binary, probed with tcp."""
    _need("memcached")
    argv = ["bake", "--binary", "/usr/bin/memcached", "--port", "11211", "--name", "myd"]
    assert main([*argv, "--arg=-u", "--arg=root"]) == 0
    assert "myd:latest" in capsys.readouterr().out
    assert main(["run", "myd", "--name", "m1", "--wait", "--timeout", str(int(WAIT))]) == 0
    capsys.readouterr()
    info = cli_json(capsys, "ip", "m1")
    assert isinstance(info, dict)
    port = int(info["ports"][0]["host"])
    # Under user-mode networking QEMU accepts the host side of a forwarded port before the
    # guest listens, so a tcp probe can pass early: the first real request may need retries.
    deadline = time.monotonic() + 60
    while True:
        try:
            got = _memcached_set_get(port, "k", "v")
        except OSError:
            got = b""
        if got.startswith(b"STORED") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got.startswith(b"STORED\r\nVALUE k 0 1\r\nv\r\n")
    assert main(["destroy", "m1"]) == 0
    assert_nothing_left(lab_home)
    catalog = cli_json(capsys, "recipes")
    assert isinstance(catalog, list)
    by_name = {r["name"]: r for r in catalog}
    assert by_name["nginx"]["package"] == "nginx" and by_name["nginx"]["ports"] == [80]
    assert by_name["memcached"]["probe"]["kind"] == "memcached"
