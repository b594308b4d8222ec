"""Templates on Xen: `xl save` a ready guest, `xl restore` clones of it, each with its own
name and MAC.

On the virtual Xen host (one lab for the module): two clones of a Redis template answer
PING, get addresses of their own, do not see each other's writes, and have the host's
clock right after the "restored" line; destroying one leaves the other and the template
(a third clone, restored after the writes, starts from the template's empty Redis).  A
rumprun guest, whose Mini-OS cannot suspend, is refused at once, nothing saved.  Through
the CLI: `run --host LAB --template` twice makes the template on xenbr0 and two clones on
addresses of their own (a checkpoint changed on the dom0 rebuilt once), `template rm`
removes it on the dom0 too.

Without the lab: the backend against what the lab's Xen 4.17 answered (what is refused
before any command, what a damaged checkpoint becomes)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.backends.test_xen_recorded import FIX, RecordedXenHost
from tests.support.xenlab import bake_redis_for_xen, emptied_after, virtual_xen_home
from uniklab.backends import xen, xl_parse
from uniklab.backends.base import Handle, InstanceSpec, spec_from_json
from uniklab.backends.xen import XenBackend, XenTemplate
from uniklab.errors import LaunchError, NotFoundError, UsageError
from uniklab.executor import DEFAULT_TIMEOUT, Executor, Result
from uniklab.guest import console as guest_console
from uniklab.lab import Lab
from uniklab.net.attach import NicRequest
from uniklab.options import RunOptions
from uniklab.paths import Paths

XEN_LAB = "xenlab"
LINUX = "redis-static:xen"  # the specialised Xen kernel, initramfs: 64 MB is enough
CLOCK_SLACK = 0.05  # the bound on a clone's clock against its host's
# "uniklab-init: net eth0 00:16:3e:… 10.99.0.115/24 via dhcp …" (guest/console.py)
NET_RE = guest_console.NET_RE


# -------------------------------------------------------------- the virtual Xen host


@pytest.fixture(scope="module")
def xen_home(image_home: Path) -> Iterator[Path]:
    with virtual_xen_home(image_home, XEN_LAB, before=bake_redis_for_xen) as path:
        yield path


@pytest.fixture
def xlab(xen_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("UNIKLAB_HOME", str(xen_home))
    with emptied_after(xen_home) as path:
        lab = Lab(Paths(path))
        try:
            yield lab
        finally:
            lab.close()


def _dom0(lab: Lab) -> Executor:
    return lab.hosts.executor(lab.hosts.get(XEN_LAB))


def _template(lab: Lab, image: str, dest: Path) -> tuple[XenBackend, InstanceSpec]:
    """A ready guest of ``image``, saved as a template into ``dest``; the backend and the
    spec it ran with (what clones start from)."""
    opts = RunOptions(host=XEN_LAB, memory="64M", net=[NicRequest("xenbr0")], wait=True)
    lab.run(image, dataclasses.replace(opts, name="tpl"))
    row = lab.store.instance("tpl")
    be = lab.backend_of(row)
    assert isinstance(be, XenBackend)
    spec = spec_from_json(row.runtime["launch"])
    dest.mkdir(parents=True)
    try:
        be.save_template(lab.handle(row), dest)
    finally:
        lab.destroy("tpl")
    return be, spec


def _clone(be: XenBackend, spec: InstanceSpec, dest: Path, name: str, mac: str) -> Handle:
    nic = dataclasses.replace(spec.nics[0], mac=mac)
    clone = dataclasses.replace(spec, name=name, rundir=spec.rundir.parent / name, nics=(nic,))
    return be.restore_clone(clone, dest)


def _address(be: XenBackend, h: Handle, mac: str, timeout: float = 60) -> str:
    """The clone's own address: the init's "net" line for its MAC after the restore."""
    deadline = time.monotonic() + timeout
    while True:
        for m in NET_RE.finditer(be.console(h)):
            if m.group(2) == mac and m.group(4) == "dhcp":
                return m.group(3).split("/")[0]
        assert time.monotonic() < deadline, be.console(h)[-2000:]
        time.sleep(0.5)


def _redis(dom0: Executor, ip: str, *cmd: str) -> str:
    return dom0.run(["redis-cli", "-h", ip, *cmd], timeout=30).stdout.strip()


# The clone's clock against the dom0's, read in the dom0 with bash builtins only (no
# process between the two readings and the reply): "BEFORE GUEST AFTER", seconds.
_CLOCK = r"""
exec 3<>"/dev/tcp/$1/6379" || exit 1
a=$EPOCHREALTIME
printf 'TIME\r\n' >&3
read -r _ <&3; read -r _ <&3; read -r s <&3; read -r _ <&3; read -r u <&3
b=$EPOCHREALTIME
echo "$a ${s%$'\r'}.$(printf %06d "${u%$'\r'}") $b"
"""


def _clock(dom0: Executor, ip: str) -> tuple[float, float, float]:
    out = dom0.run(["bash", "-c", _CLOCK, "bash", ip], timeout=30).stdout.split()
    before, guest, after = map(float, out)
    return before, guest, after


def _ping(dom0: Executor, ip: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _redis(dom0, ip, "ping") != "PONG":
        assert time.monotonic() < deadline, f"no PONG from {ip}"
        time.sleep(0.5)


@pytest.mark.e2e
@pytest.mark.root
def test_two_clones_of_a_linux_template(xlab: Lab, tmp_path: Path) -> None:
    dom0 = _dom0(xlab)
    dest = tmp_path / "k-linux"
    be, spec = _template(xlab, LINUX, dest)
    record = json.loads((dest / xen.TEMPLATE_RECORD).read_text())
    state = xen.TEMPLATES / dest.name / xen.STATE
    domains = [ln.split()[0] for ln in dom0.run(["xl", "list"]).stdout.splitlines()[1:]]
    assert domains == ["Domain-0"]  # xl save ended the template's domain
    assert dom0.run(["sha256sum", str(state)]).stdout.split()[0] == record["sha256"]

    macs = ["00:16:3e:7e:00:01", "00:16:3e:7e:00:02", "00:16:3e:7e:00:03"]
    handles: dict[str, Handle] = {}
    try:
        for i, mac in enumerate(macs[:2], 1):
            start = time.monotonic()
            handles[f"c{i}"] = _clone(be, spec, dest, f"c{i}", mac)
            print(f"restore_clone c{i}: {time.monotonic() - start:.2f}s")
        listed = {
            c.name: c.macs for c in xl_parse.parse_list_long(dom0.run(["xl", "list", "-l"]).stdout)
        }
        assert listed["c1"] == (macs[0],) and listed["c2"] == (macs[1],)
        ips = {n: _address(be, h, mac) for (n, h), mac in zip(handles.items(), macs, strict=False)}
        assert ips["c1"] != ips["c2"], ips  # each gave the template's lease up
        for name, ip in ips.items():
            _ping(dom0, ip)
            console = be.console(handles[name])
            # The line reached the guest's console (its tty echoes the escape as "^[").
            assert "^[uniklab:restored " in console, console[-2000:]
            # The clock right after the restored line: against the dom0's (whose clock
            # Xen's shared info and the line both gave the guest).
            before, guest, after = _clock(dom0, ip)
            assert before - CLOCK_SLACK <= guest <= after + CLOCK_SLACK, (before, guest, after)
            print(f"{name} at {ip}: clock {guest - (before + after) / 2:+.4f}s vs the dom0's")

        # Isolation: a write in one is not seen in the other.
        assert _redis(dom0, ips["c1"], "set", "k", "c1") == "OK"
        assert _redis(dom0, ips["c1"], "get", "k") == "c1"
        assert _redis(dom0, ips["c2"], "get", "k") == ""

        # Destroying one leaves the other and the template.
        be.destroy(handles.pop("c1"))
        assert _redis(dom0, ips["c2"], "ping") == "PONG"
        assert dom0.run(["sha256sum", str(state)]).stdout.split()[0] == record["sha256"]
        handles["c3"] = _clone(be, spec, dest, "c3", macs[2])
        ip3 = _address(be, handles["c3"], macs[2])
        _ping(dom0, ip3)
        assert _redis(dom0, ip3, "get", "k") == ""  # the template never saw the write
    finally:
        for h in handles.values():
            be.destroy(h)
        be.drop_template(dest)
    left = dom0.run(["sh", "-c", 'ls "$1" "$2"', "sh", str(xen.DOMAINS), str(xen.TEMPLATES)])
    assert left.stdout.split() == [f"{xen.DOMAINS}:", f"{xen.TEMPLATES}:"]


@pytest.mark.e2e
@pytest.mark.root
def test_a_rumprun_guest_cannot_be_a_template_and_serves_on(xlab: Lab, tmp_path: Path) -> None:
    """rumprun's 2015 Mini-OS has no suspend: `xl save` would wait 60 s for an answer and
    fail; the backend says so before asking."""
    dom0 = _dom0(xlab)
    dest = tmp_path / "k-rumprun"
    start = time.monotonic()
    with pytest.raises(LaunchError, match="does not announce Xen's suspend") as err:
        _template(xlab, "rumprun-redis", dest)
    print(f"refused: {err.value}")
    assert not (dest / xen.TEMPLATE_RECORD).exists()
    assert dom0.run(["ls", str(xen.TEMPLATES)], check=False).stdout.split() == []
    print(f"rumprun template refused after {time.monotonic() - start:.1f}s (boot included)")


# ------------------------------------------------- without the lab: recorded answers


class SavingXenHost(RecordedXenHost):
    """The recorded dom0, also answering what save_template and restore_clone ask."""

    def __init__(self, *, suspend: str = "1", restore: tuple[int, str] = (0, "")) -> None:
        super().__init__()
        self.suspend = suspend
        self.restore = restore  # the restore script's exit status and stderr

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        args = [str(a) for a in argv]
        if args[0] == "xenstore-read":
            self.calls.append(args)
            return Result(args, 0 if self.suspend else 1, self.suspend + "\n", "")
        if args[:3] == ["sh", "-c", xen._RESTORE]:
            self.calls.append(args)
            self.files[args[6]] = input or ""
            rc, err = self.restore
            out = "domid 7\nrestored 1796027801.810338000\n" if rc == 0 else ""
            return Result(args, rc, out, err)
        return super().run(argv, timeout=timeout, check=check, input=input, env=env, cwd=cwd)


def _record(dest: Path, **kw: object) -> None:
    fields: dict[str, object] = dict(
        host="xenhost",
        key=dest.name,
        size=67253557,
        mtime="1796027674.617427515",
        sha256="3b" * 32,
        kernel="/var/lib/uniklab/blobs/k",
        ramdisk="/var/lib/uniklab/blobs/i",
        cmdline="reboot=t panic=-1 quiet",
        memory_mb=64,
        vcpus=1,
        nics=1,
        disks=(),
        save_seconds=2.8,
    )
    fields.update(kw)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / xen.TEMPLATE_RECORD).write_text(json.dumps(dataclasses.asdict(XenTemplate(**fields))))  # type: ignore[arg-type]


def _spec(tmp_path: Path, **kw: object) -> InstanceSpec:
    from uniklab.net.attachment import Attachment

    fields: dict[str, object] = dict(
        name="c1",
        kernel=tmp_path / "bzImage",
        initrd=tmp_path / "initrd",
        cmdline="",
        memory_mb=64,
        vcpus=1,
        rundir=Path("/tmp/ukl-a/run/5"),
        nics=(Attachment(kind="host-bridge", mac="00:16:3e:7e:00:01", bridge="xenbr0"),),
    )
    fields.update(kw)
    return InstanceSpec(**fields)  # type: ignore[arg-type]


def test_a_domain_that_cannot_suspend_is_refused_before_xl_save(tmp_path: Path) -> None:
    host = SavingXenHost(suspend="")
    handle = Handle(pid=None, runtime={"domain": "keep", "domid": 1, "cfg": "/x/keep.cfg"})
    with pytest.raises(LaunchError, match=r"control/feature-suspend is unset; rumprun"):
        XenBackend(host).save_template(handle, tmp_path / "k1")
    assert not any(c[:2] == ["xl", "save"] for c in host.calls)


def test_a_clone_gets_a_config_of_its_own_and_the_restored_line(tmp_path: Path) -> None:
    dest = tmp_path / "k1"
    _record(dest)
    host = SavingXenHost()
    h = XenBackend(host).restore_clone(_spec(tmp_path), dest)
    assert h.runtime == {
        "host": "xenhost",
        "domain": "c1",
        "cfg": str(xen.cfg_path("c1")),
        "domid": 7,
        "clone_of": "k1",
    }
    [call] = [c for c in host.calls if c[:3] == ["sh", "-c", xen._RESTORE]]
    assert call[4:6] == [str(xen.TEMPLATES / "k1"), "67253557 1796027674.617427515"]
    assert call[9] == "\x1buniklab:restored"
    cfg = host.files[str(xen.cfg_path("c1"))]
    assert cfg.startswith(f"{xen.OWNER_PREFIX}{xen.owner_tag(Path('/tmp/ukl-a/run'))}\n")
    assert 'name = "c1"' in cfg and "mac=00:16:3e:7e:00:01,bridge=xenbr0" in cfg
    # The saved domain's kernel and command line, not the clone spec's.
    assert 'kernel = "/var/lib/uniklab/blobs/k"' in cfg
    assert 'extra = "console=hvc0 reboot=t panic=-1 quiet"' in cfg


@pytest.mark.parametrize(
    "spec_kw,msg",
    [
        ({"memory_mb": 128}, "has its 64 MB and 1 vCPU"),
        ({"vcpus": 2}, "has its 64 MB and 1 vCPU"),
        ({"nics": ()}, "has its 1 NIC"),
    ],
)
def test_a_clone_unlike_its_template_is_refused_before_any_command(
    tmp_path: Path, spec_kw: dict[str, object], msg: str
) -> None:
    dest = tmp_path / "k1"
    _record(dest)
    host = SavingXenHost()
    with pytest.raises(UsageError, match=msg):
        XenBackend(host).restore_clone(_spec(tmp_path, **spec_kw), dest)
    assert host.calls == []


@pytest.mark.parametrize(
    "restore,error,msg",
    [
        ((3, "its state is missing\n"), NotFoundError, "gone or changed since it was saved"),
        (
            (4, (FIX / "xl_restore_truncated.stderr").read_text()),
            NotFoundError,
            "is unreadable",
        ),
        (
            (4, (FIX / "xl_create_exists.stderr").read_text()),
            LaunchError,
            "a domain named redis already exists",
        ),
    ],
)
def test_what_a_failed_restore_becomes(
    tmp_path: Path, restore: tuple[int, str], error: type[Exception], msg: str
) -> None:
    dest = tmp_path / "k1"
    _record(dest)
    with pytest.raises(error, match=msg):
        XenBackend(SavingXenHost(restore=restore)).restore_clone(_spec(tmp_path), dest)


def test_a_template_of_another_host_or_none_is_not_found(tmp_path: Path) -> None:
    be = XenBackend(SavingXenHost())
    with pytest.raises(NotFoundError, match="no Xen template"):
        be.restore_clone(_spec(tmp_path), tmp_path / "none")
    _record(tmp_path / "k2", host="elsewhere")
    with pytest.raises(NotFoundError, match="saved on elsewhere, not xenhost"):
        be.restore_clone(_spec(tmp_path), tmp_path / "k2")
    bad = tmp_path / "k3"
    bad.mkdir()
    (bad / xen.TEMPLATE_RECORD).write_text("{")
    with pytest.raises(NotFoundError):
        be.restore_clone(_spec(tmp_path), bad)


class InfoXenHost(SavingXenHost):
    def run(self, argv: Sequence[str | Path], **kw: object) -> Result:  # type: ignore[override]
        if [str(a) for a in argv] == ["xl", "info"]:
            self.calls.append(["xl", "info"])
            return Result(["xl", "info"], 0, (FIX / "xl_info.txt").read_text(), "")
        return super().run(argv, **kw)  # type: ignore[arg-type]


def test_the_template_key_names_the_host_and_its_xen(tmp_path: Path) -> None:
    host = InfoXenHost()
    be = XenBackend(host, vif_script="vif-uniklab")
    want = {"host": "xenhost", "xen": "4.17.7", "vif_script": "vif-uniklab"}
    assert be.template_key(_spec(tmp_path)) == want
    assert be.template_key(_spec(tmp_path)) == want
    assert host.calls.count(["xl", "info"]) == 1  # asked once


def test_a_template_key_is_a_plain_name(tmp_path: Path) -> None:
    assert xen.template_key(tmp_path / "ab12.cd-3") == "ab12.cd-3"
    for bad in ("..", ".hidden", "a b", "x" * 200):
        with pytest.raises(UsageError):
            xen.template_key(tmp_path / bad)


def test_restore_scripts_are_posix_sh() -> None:
    """The dom0 may run them with dash: no bashisms outside the EPOCHREALTIME branch."""
    sh = shutil.which("dash") or shutil.which("sh")
    assert sh
    for script in (xen._RESTORE, xen._KEEP_STATE):
        r = subprocess.run([sh, "-n", "-c", script], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
    assert not re.search(r"\[\[|\$\{\w+/", xen._RESTORE)


@pytest.mark.e2e
@pytest.mark.root
def test_run_template_on_a_xen_host_through_the_cli(
    xlab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --host LAB --template` twice: the first builds the template (on xenbr0, its
    checkpoint on the dom0 in a directory named by the key), both are clones answering on
    addresses of their own; a checkpoint changed on the dom0 is rebuilt once for the next
    clone; `template rm` removes it on the dom0 too, and that clone runs on."""
    from tests.support.cli import cli_json
    from uniklab.cli.main import main

    dom0 = _dom0(xlab)
    run = ["run", LINUX, "--host", XEN_LAB, "--template", "-m", "64M", "--name"]
    names = ("c1", "c2", "c3")
    try:
        for name in ("c1", "c2"):
            assert main([*run, name, "--wait"]) == 0, capsys.readouterr().err
        [t] = cli_json(capsys, "template", "ls")
        assert isinstance(t, dict) and t["backend"] == "xen" and t["image"] == LINUX
        key = str(t["key"])
        assert dom0.run(["ls", str(xen.TEMPLATES)]).stdout.split() == [key]
        rows = {r["name"]: r for r in cli_json(capsys, "ps")}  # type: ignore[union-attr]
        assert rows["c1"]["clone_of"] == key and rows["c2"]["clone_of"] == key
        ips = {}
        for name in ("c1", "c2"):
            found = xlab.reach.address(xlab.store.instance(name), timeout=60)
            assert found is not None
            ips[name] = found.ip
            _ping(dom0, found.ip)
        assert ips["c1"] != ips["c2"], ips
        domains = [ln.split()[0] for ln in dom0.run(["xl", "list"]).stdout.splitlines()[1:]]
        assert sorted(domains) == ["Domain-0", "c1", "c2"]  # the template's domain is saved
        assert main(["destroy", "c1"]) == 0
        assert _redis(dom0, ips["c2"], "ping") == "PONG"  # one clone gone, the other on
        assert main(["destroy", "c2"]) == 0

        # The checkpoint changes on the dom0: the next clone's restore refuses it, the
        # template is made again, and that clone restored from the new one.
        state = str(xen.TEMPLATES / key / xen.STATE)
        dom0.run(["sh", "-c", 'printf x >> "$1"', "sh", state])
        assert main([*run, "c3", "--wait"]) == 0, capsys.readouterr().err
        [t2] = cli_json(capsys, "template", "ls")
        assert isinstance(t2, dict) and t2["key"] == key and t2["created"] != t["created"]
        assert xlab.store.instance("c3").runtime.get("clone_of") == key
        found = xlab.reach.address(xlab.store.instance("c3"), timeout=60)
        assert found is not None
        _ping(dom0, found.ip)

        capsys.readouterr()
        assert main(["template", "rm", key[:12]]) == 0
        assert cli_json(capsys, "template", "ls") == []
        assert dom0.run(["ls", str(xen.TEMPLATES)]).stdout.split() == []
        _ping(dom0, found.ip)  # a clone runs on without its template
    finally:
        for name in names:
            if any(r.name == name for r in xlab.store.instances()):
                main(["destroy", name])  # checked below: nothing left
    left = dom0.run(["sh", "-c", 'ls "$1" "$2"', "sh", str(xen.DOMAINS), str(xen.TEMPLATES)])
    assert left.stdout.split() == [f"{xen.DOMAINS}:", f"{xen.TEMPLATES}:"]
    domains = [ln.split()[0] for ln in dom0.run(["xl", "list"]).stdout.splitlines()[1:]]
    assert domains == ["Domain-0"]
    assert cli_json(capsys, "ps") == []
