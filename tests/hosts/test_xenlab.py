"""The virtual Xen host end to end: `lab up`, Redis as a PV domU on xenbr0, `lab down`.

The runbook's steps, done by hand over ssh in dom0 (the Xen backend does not exist yet).
With UNIKLAB_UPDATE_FIXTURES=1 it records xl's real outputs under tests/fixtures/xen/
for the unit tests of that backend.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.leaks import qemu_processes
from uniklab.bake import dom0
from uniklab.cli.lab import lab as lab_cli
from uniklab.executor import Result, local
from uniklab.guest.config import GuestConfig, Nic
from uniklab.hosts import virtual_xen
from uniklab.lab import Lab
from uniklab.paths import Paths

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(
        shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
        reason="needs apt-get and dpkg-deb to fetch Xen",
    ),
    pytest.mark.timeout(900),
]

FIXTURES = Path(__file__).parent.parent / "fixtures" / "xen"
MAC = "00:11:22:33:44:55"


def _ssh(
    host: virtual_xen.VirtualXenHost, *argv: str, check: bool = True, timeout: float = 60
) -> Result:
    return local.run(virtual_xen.ssh_argv(host, list(argv)), check=check, timeout=timeout)


def _scp(host: virtual_xen.VirtualXenHost, sources: list[Path], dest: str) -> None:
    local.run(
        [
            "scp", "-q", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-i", host.identity_file, "-P", str(host.ssh_port),
            *[str(s) for s in sources], f"{host.ssh_target}:{dest}",
        ],
        timeout=180,
    )  # fmt: skip


def _record(name: str, text: str) -> None:
    if os.environ.get("UNIKLAB_UPDATE_FIXTURES"):
        FIXTURES.mkdir(parents=True, exist_ok=True)
        (FIXTURES / name).write_text(text)


def _lease(host: virtual_xen.VirtualXenHost, mac: str) -> str | None:
    leases = _ssh(host, "cat", dom0.LEASES, check=False).stdout
    for line in leases.splitlines():
        fields = line.split()  # expiry mac ip hostname client-id
        if len(fields) >= 3 and fields[1] == mac:
            return fields[2]
    return None


def test_lab_runs_redis_as_pv_domu(lab_home: Path, tmp_path: Path) -> None:
    paths = Paths(lab_home)
    lab = Lab(paths)
    try:
        manifest = lab.bake("redis").manifest
        kernel = lab.images.kernel_path(manifest)
        initrd = lab.images.initrd_path(manifest)
    finally:
        lab.close()
    # The image as baked boots as a PV domU: it carries xen-netfront (and pv_initrd
    # would add it to an image baked before that).
    pv = tmp_path / "redis.initrd"
    pv.write_bytes(dom0.pv_initrd(initrd, release=manifest.kernel.release))
    assert pv.read_bytes() == initrd.read_bytes()

    runner = CliRunner()
    try:
        t0 = time.monotonic()
        res = runner.invoke(lab_cli, ["up", "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        up_seconds = time.monotonic() - t0
        # stdout only: `lab up` says its steps on stderr (CliRunner's output mixes both).
        host = virtual_xen.VirtualXenHost(**json.loads(res.stdout))
        assert (host.ssh_target, host.hypervisor) == ("root@127.0.0.1", "xen")
        assert Path(host.identity_file).stat().st_mode & 0o077 == 0
        # A second `up` is a no-op that returns the same lab.
        assert virtual_xen.up(paths) == host
        assert virtual_xen.status(paths).running

        xl_list = _ssh(host, "xl", "list").stdout
        assert "Domain-0" in xl_list.splitlines()[1]

        _ssh(host, "mkdir", "-p", "/root/redis")
        _scp(host, [kernel, pv], "/root/redis/")
        extra = " ".join(
            [
                "console=hvc0 reboot=t panic=-1 quiet",
                GuestConfig(name="redis", net=[Nic(mac=MAC)]).encode(),
            ]
        )
        config = "\n".join(
            [
                'name = "redis"',
                'type = "pv"',
                f'kernel = "/root/redis/{kernel.name}"',
                f'ramdisk = "/root/redis/{pv.name}"',
                "memory = 128",
                "vcpus = 1",
                f'extra = "{extra}"',
                f"vif = ['mac={MAC},bridge=xenbr0,script={dom0.VIF_SCRIPT}']",
                'on_poweroff = "destroy"',
                'on_crash = "destroy"',
                "",
            ]
        )
        (tmp_path / "redis.cfg").write_text(config)
        _scp(host, [tmp_path / "redis.cfg"], "/root/redis/")

        t1 = time.monotonic()
        created = _ssh(host, "xl", "create", "/root/redis/redis.cfg", timeout=120)
        ip = None
        pong = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ip = ip or _lease(host, MAC)
            if ip:
                pong = _ssh(host, "redis-cli", "-h", ip, "ping", check=False).stdout.strip()
                if pong == "PONG":
                    break
            time.sleep(1)
        pong_seconds = time.monotonic() - t1
        console = _ssh(host, "cat", f"{dom0.CONSOLE_DIR}/guest-redis.log", check=False).stdout
        assert pong == "PONG", f"no PONG from {ip}; domU console:\n{console[-3000:]}"
        print(f"\nlab up {up_seconds:.1f}s; xl create to PONG {pong_seconds:.1f}s ({ip})")

        running = _ssh(host, "xl", "list").stdout
        assert any(line.startswith("redis ") for line in running.splitlines())
        listing = _ssh(host, "xl", "list", "-l").stdout
        assert {d["config"]["c_info"]["name"] for d in json.loads(listing)} >= {"redis"}
        _record("xl_list.txt", running)
        _record("xl_list_l.json", listing)
        _record("xl_info.txt", _ssh(host, "xl", "info").stdout)
        _record("xl_create.stdout", created.stdout)
        _record("xl_create.stderr", created.stderr)
        again = _ssh(host, "xl", "create", "/root/redis/redis.cfg", check=False)
        assert again.returncode != 0
        _record("xl_create_exists.stderr", again.stderr)
        _record("domu_console.log", console)
        _record("dnsmasq.leases", _ssh(host, "cat", dom0.LEASES).stdout)
        _record("redis.cfg", config)

        _ssh(host, "xl", "destroy", "redis")
        after = _ssh(host, "xl", "list").stdout
        assert not any(line.startswith("redis ") for line in after.splitlines())
        _record("xl_list_dom0_only.txt", after)
        missing = _ssh(host, "xl", "destroy", "redis", check=False)
        assert missing.returncode != 0
        _record("xl_destroy_missing.stderr", missing.stderr)
    finally:
        runner.invoke(lab_cli, ["down"])

    status = virtual_xen.status(paths)
    assert not status.running
    assert not Path(status.rundir).exists()
    assert qemu_processes(str(lab_home)) == []
