"""The runbook on a real Xen: the virtual Xen host (Xen 4.17 under QEMU), registered as
an inventory host, `host doctor`, Redis as a PV domU on xenbr0 with the runbook's MAC and
DHCP, its address found by MAC, probed through an SSH tunnel, listed, destroyed; a domain
`xl destroy`ed behind uniklab's back; `gc` on the host.

The lab boots once for the module (the slow part under TCG); each test leaves it empty."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.backends.contract import BackendContract, Target
from tests.support.terminal import Terminal
from tests.support.xenlab import bake_redis_for_xen, emptied_after, virtual_xen_home
from uniklab.backends import xen
from uniklab.bake.dom0 import INIT_LOG
from uniklab.cli.main import main
from uniklab.executor import Executor
from uniklab.lab import Lab, RunOptions
from uniklab.net.attach import NicRequest
from uniklab.state.store import InstanceRow

pytestmark = [pytest.mark.e2e, pytest.mark.root]

XEN_LAB = "xenlab"


@pytest.fixture(scope="module")
def xen_home(image_home: Path) -> Iterator[Path]:
    """A home with the virtual Xen host up (registered as host XEN_LAB), for the module."""
    with virtual_xen_home(image_home, XEN_LAB, before=bake_redis_for_xen) as path:
        yield path


@pytest.fixture
def lab_home(xen_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The module's home for one test; what a failed test left on the lab goes after it."""
    monkeypatch.setenv("UNIKLAB_HOME", str(xen_home))
    with emptied_after(xen_home) as path:
        yield path


@pytest.fixture
def xen_lab(lab_home: Path) -> str:
    return XEN_LAB


@pytest.fixture
def dom0(lab: Lab, xen_lab: str) -> Executor:
    return lab.hosts.executor(lab.hosts.get(xen_lab))


def _left_on(dom0: Executor) -> tuple[list[str], list[str], list[str]]:
    """Domains, domain configs and console logs on the dom0."""
    domains = [ln.split()[0] for ln in dom0.run(["xl", "list"]).stdout.splitlines()[1:]]
    cfgs = dom0.run(["ls", str(xen.DOMAINS)]).stdout.split()
    logs = dom0.run(["ls", str(xen.CONSOLE_DIR)]).stdout.split()
    return domains, cfgs, logs


def _run(xen_lab: str, name: str, *extra: str) -> None:
    argv = ["run", "redis", "--host", xen_lab, "--name", name, "--memory", "128M"]
    assert main([*argv, "--net", "xenbr0", *extra]) == 0


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_redis_domu_on_xen(
    xen_lab: str, lab: Lab, dom0: Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    checks = _json(capsys, "host", "doctor", xen_lab)
    assert isinstance(checks, list) and all(c["ok"] for c in checks), checks

    start = time.monotonic()
    assert (
        main(
            [
                "run",
                "redis",
                "--host",
                xen_lab,
                "--name",
                "redis",
                "--memory",
                "128M",
                "--net",
                "xenbr0",
                "--mac",
                "00:11:22:33:44:55",
                "--wait",
            ]
        )
        == 0
    )
    ready = time.monotonic() - start
    start = time.monotonic()
    rows = _json(capsys, "ps", "--host", xen_lab)
    ps_s = time.monotonic() - start
    assert isinstance(rows, list)
    [row] = rows
    assert (row["name"], row["backend"], row["state"]) == ("redis", "xen", "running")
    assert (row["memory_mb"], row["vcpus"]) == (128, 1)

    info = lab.ip("redis")
    assert info.source == f"dhcp lease on {xen_lab}" and info.host.startswith("10.99.0.")
    assert lab.check("redis").ok
    # a real client, through the same kind of tunnel, PING / SET / GET
    ep = lab.endpoint(lab.get("redis"), 6379)
    r = redis.Redis(ep.host, ep.port, socket_timeout=10)
    assert r.ping() and r.set("foo", "bar") and r.get("foo") == b"bar"
    assert "uniklab-init: exec /bin/redis-server" in lab.logs("redis")

    # The domain's config names the home that made it (what gc goes by).
    cfg = dom0.run(["cat", str(xen.cfg_path("redis"))]).stdout
    assert cfg.splitlines()[0] == f"{xen.OWNER_PREFIX}{xen.owner_tag(lab.paths.run)}"

    start = time.monotonic()
    assert main(["destroy", "redis"]) == 0
    destroy_s = time.monotonic() - start
    assert _left_on(dom0) == (["Domain-0"], [], [])
    print(f"run->PONG {ready:.1f}s, ps over ssh {ps_s:.2f}s, destroy {destroy_s:.2f}s")


def test_xl_destroy_behind_uniklabs_back(
    xen_lab: str, lab: Lab, dom0: Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(xen_lab, "victim", "--wait")
    dom0.run(["xl", "destroy", "victim"])
    rows = _json(capsys, "ps", "--host", xen_lab)
    assert isinstance(rows, list)
    [row] = rows
    assert (row["name"], row["state"]) == ("victim", "crashed")
    assert "domain victim is gone" in row["exit_reason"], row  # the backend's word
    capsys.readouterr()
    assert main(["ps"]) == 0
    assert f"crashed ({row['exit_reason']})" in capsys.readouterr().out
    start = time.monotonic()
    assert main(["destroy", "victim"]) == 0
    destroy_s = time.monotonic() - start
    assert lab.store.instances() == []
    assert _left_on(dom0) == (["Domain-0"], [], [])
    assert _json(capsys, "gc", "--dry-run") == []
    print(
        f"xl destroy behind uniklab's back: ps says crashed ({row['exit_reason']}); "
        f"destroy {destroy_s:.2f}s"
    )


def test_gc_sweeps_the_xen_host(
    xen_lab: str, lab: Lab, dom0: Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both ready first: domUs still booting under TCG keep the dom0 too busy to answer
    # within gc's bound, and a host that does not answer is reported, not swept.
    _run(xen_lab, "keep", "--wait")
    _run(xen_lab, "orphan", "--wait")
    # The store forgets the orphan (as if its row were lost): its domain runs on.  A
    # config is left whose domain is gone, and another home has a config there too.
    lab.store.delete_instance(lab.store.instance("orphan").id)
    dom0.run(["sh", "-c", 'cp "$1/orphan.cfg" "$1/ghost.cfg"', "sh", str(xen.DOMAINS)])
    other = str(xen.DOMAINS / "other.cfg")
    dom0.run(["sh", "-c", 'cat > "$1"', "sh", other], input=f"{xen.OWNER_PREFIX}0123456789abcdef\n")
    # And a registered host that does not answer.
    assert main(["host", "add", "deadxen", "--ssh", "root@127.0.0.1", "--port", "1"]) == 0
    try:
        capsys.readouterr()
        start = time.monotonic()
        assert main(["gc", "--dry-run", "--json"]) == 1
        dry_s = time.monotonic() - start
        out, err = capsys.readouterr()
        found = sorted((i["kind"], i["name"], i["host"]) for i in json.loads(out))
        assert found == [("domain", "orphan", xen_lab), ("domain-cfg", "ghost", xen_lab)], err
        assert err.count("\n") == 1 and "host deadxen not swept" in err
        assert "orphan" in _left_on(dom0)[0]  # a dry run removes nothing
        start = time.monotonic()
        assert main(["gc"]) == 1
        gc_s = time.monotonic() - start
    finally:
        assert main(["host", "rm", "deadxen"]) == 0
    # The lab itself (a QEMU under this home) is not a leftover: it still answers.
    assert _left_on(dom0) == (
        ["Domain-0", "keep"],
        ["keep.cfg", "other.cfg"],
        ["guest-keep.log"],
    )
    assert _json(capsys, "gc") == []
    assert main(["destroy", "keep"]) == 0
    dom0.run(["rm", "-f", other])
    assert _left_on(dom0) == (["Domain-0"], [], [])
    print(
        f"gc on the Xen host: dry run {dry_s:.2f}s, removal {gc_s:.2f}s "
        "(with a dead host registered)"
    )


RUNBOOK_MAC = "00:11:22:33:44:55"


def test_the_runbooks_line_with_a_real_rumprun_redis(
    xen_lab: str, lab: Lab, dom0: Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runbook, literally: `rumprun xen -N redis -M 64 -I xen0,xenif,mac=…,bridge=xenbr0
    -W xen0,inet,dhcp -d <image>` with the rumprun-packages Redis baked for xen_pv; xl list
    shows it, its address is found by its MAC, redis answers, destroy leaves nothing."""
    lab.bake("rumprun-redis")
    runbook = [
        "rumprun", "xen", "-N", "redis", "-M", "64",
        "-I", f"xen0,xenif,mac={RUNBOOK_MAC},bridge=xenbr0", "-W", "xen0,inet,dhcp",
        "-d", "rumprun-redis",
    ]  # fmt: skip
    start = time.monotonic()
    capsys.readouterr()
    assert main(runbook) == 0
    said = capsys.readouterr().out
    assert said.startswith("xen:") and said.split()[1] == "redis", said
    domains = dom0.run(["xl", "list"]).stdout.splitlines()
    assert any(ln.split()[0] == "redis" and ln.split()[2] == "64" for ln in domains), (
        domains,
        lab.logs("redis")[-3000:],
    )
    view = lab.get("redis")
    assert view.row.attachments[0].mac == RUNBOOK_MAC
    info = lab.ip("redis", timeout=120)  # by its MAC, in the dom0's DHCP leases
    assert info.source == f"dhcp lease on {xen_lab}"
    ep = lab.endpoint(lab.get("redis"), 6379)
    client = redis.Redis(ep.host, ep.port, socket_timeout=10, protocol=2)
    deadline = time.monotonic() + 180
    while True:
        try:
            assert client.ping() is True
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    ready = time.monotonic() - start
    assert client.set("runbook", "xen") and client.get("runbook") == b"xen"
    assert client.info()["redis_version"] == "3.0.6"
    logs = lab.logs("redis")
    assert '=== calling "redis-server" main() ===' in logs
    assert main(["destroy", "redis"]) == 0
    assert _left_on(dom0) == (["Domain-0"], [], [])
    print(f"rumprun xen_pv: the runbook's line -> PONG {ready:.1f}s")


def test_linux_at_the_runbooks_64M_on_xen(
    xen_lab: str, lab: Lab, dom0: Executor, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's kernel does not load in 64 MB (its kernel segment alone is 58 MB): one line
    says so and what to do; the specialised Xen kernel with a static Redis serves in it."""
    capsys.readouterr()
    argv = ["run", "--host", xen_lab, "--net", "xenbr0", "--memory", "64M"]
    assert main([*argv, "redis", "--name", "big"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: xl create failed on xenlab: 64 MB is too little"), err
    assert "specialised:xen" in err and "libxl:" not in err and "\n" not in err
    assert lab.store.instances() == [] and _left_on(dom0) == (["Domain-0"], [], [])
    # The kernel of the xen profile is built once per machine (minutes) when missing.
    lab.bake("redis-static", tag="xen", kernel="specialised:xen", root="initramfs")
    assert main([*argv, "redis-static:xen", "--name", "small", "--wait"]) == 0
    assert lab.check("small").ok
    assert main(["destroy", "small"]) == 0
    assert _left_on(dom0) == (["Domain-0"], [], [])


def test_console_and_logs_follow_on_xen(xen_lab: str, lab: Lab) -> None:
    """`uniklab console` is `xl console` on the dom0 through `ssh -t`: keys typed on this
    terminal reach the guest's hvc0 (its tty echoes them), Ctrl-] (xl's escape) detaches
    with exit 0, and the terminal is as it was.  `logs -f` (a `tail -F` on the dom0)
    prints that echo too and ends, exit 0, once the domain is destroyed."""
    _run(xen_lab, "con", "--wait")
    uniklab = [sys.executable, "-m", "uniklab"]
    follower = subprocess.Popen(
        [*uniklab, "logs", "-f", "con"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        with Terminal([*uniklab, "console", "con"]) as term:
            # xl console, once attached, first gives what the guest said meanwhile (keys
            # typed before that would be the remote terminal's, not the guest's).
            term.expect(b"Ready to accept connections")
            term.type(b"typed-on-xen\r")
            term.expect(b"typed-on-xen\r\n")  # the guest's echo
            term.type(b"\x1d")
            assert term.wait() == 0
            assert term.restored()
        lab.destroy("con")
        out, err = follower.communicate(timeout=60)
        assert follower.returncode == 0, err
        assert b"typed-on-xen\n" in out
        assert err.decode().strip().splitlines()[-1] == "con: console ended (destroyed)"
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()


def test_the_dom0_starts_a_daemon_that_died_again(dom0: Executor) -> None:
    """The dom0's init keeps dnsmasq, sshd (and libvirtd) up: dnsmasq killed, a new one
    runs within seconds and the init's log says so (the run's health report shows it)."""
    log = INIT_LOG
    old = dom0.run(["cat", "/run/dnsmasq.pid"]).stdout.strip()
    kill = f'echo "test: dnsmasq killed on purpose" >> {log}; kill -9 "$1"'
    dom0.run(["sh", "-c", kill, "sh", old])
    alive = 'p=$(cat /run/dnsmasq.pid) && kill -0 "$p" && echo "$p"'
    deadline, new = time.monotonic() + 30, old
    while new == old and time.monotonic() < deadline:
        time.sleep(1)
        r = dom0.run(["sh", "-c", alive], check=False)
        new = r.stdout.strip() if r.returncode == 0 else old
    assert new != old, "dnsmasq was not started again"
    assert "dnsmasq is gone: starting it again" in dom0.run(["cat", log]).stdout


def test_xen_bad_input(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any connection: the host is registered but nothing listens there."""
    xen_lab = "deadxen"
    assert main(["host", "add", xen_lab, "--ssh", "root@127.0.0.1", "--port", "1"]) == 0
    for argv, msg in [
        # Without --net a Xen guest joins xenbr0 (as xl's vif does); -p has no meaning there.
        (["run", "redis", "--host", xen_lab, "-p", "1:6379"], "give --net BRIDGE"),
        (["run", "redis", "--host", xen_lab, "--net", "xenbr0", "-p", "1:6379"], "-p"),
        (["run", "redis", "--host", xen_lab, "--net", "bad bridge"], "invalid network name"),
        (["run", "redis", "--host", "nosuchhost", "--net", "xenbr0"], "no such host"),
    ]:
        assert main(argv) != 0
        assert msg in capsys.readouterr().err, argv


class TestXenContract(BackendContract):
    """The backend contract on the virtual Xen host: PV domUs on its xenbr0."""

    @pytest.fixture
    def target(self, lab: Lab, xen_lab: str, dom0: Executor) -> Target:
        def xl_destroy(lab: Lab, row: InstanceRow) -> None:
            dom0.run(["xl", "destroy", row.name])

        opts = RunOptions(host=xen_lab, memory="128M", net=[NicRequest("xenbr0")])
        return Target(lab, opts, xl_destroy)
