"""The template store without guests: checks, locks, lookups (uniklab.templates)."""

from __future__ import annotations

import fcntl
import json
from dataclasses import replace
from pathlib import Path

import pytest

from uniklab import templates
from uniklab.backends import registry
from uniklab.bake.image import KernelInfo, Manifest, ProbeSpec
from uniklab.errors import ConflictError, NotFoundError, UsageError
from uniklab.lab import Lab
from uniklab.net.attach import NicRequest
from uniklab.options import RunOptions
from uniklab.paths import Paths

KEY = "c0ffee" + "0" * 58


def _template(base: Path, key: str = KEY, big: bool = False) -> Path:
    path = base / key
    path.mkdir(parents=True)
    (path / "state").write_bytes(b"device state")
    if big:  # past HASHED_MAX: checked by size and mtime
        with (path / "memory").open("wb") as f:
            f.truncate(templates.HASHED_MAX + 1)
    files = {p.name: templates._fingerprint(p) for p in path.iterdir()}
    meta = {"format": templates.FORMAT, "key": key, "digest": "sha256:1", "files": files}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_a_whole_template_passes_its_check(tmp_path: Path) -> None:
    path = _template(tmp_path, big=True)
    assert templates.check(path, KEY).digest == "sha256:1"


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "state").write_bytes(b"device statf"),  # same size, other bytes
        lambda p: (p / "state").unlink(),
        lambda p: (p / "memory").unlink(),
        lambda p: (p / "memory").open("ab").write(b"x"),
        lambda p: (p / "meta.json").write_text("{"),
        lambda p: (p / "meta.json").unlink(),
    ],
)
def test_a_damaged_template_fails_its_check(tmp_path: Path, damage: object) -> None:
    path = _template(tmp_path, big=True)
    assert callable(damage)
    damage(path)
    with pytest.raises(NotFoundError):
        templates.check(path, KEY)


def test_a_template_is_checked_against_its_own_key(tmp_path: Path) -> None:
    path = _template(tmp_path)
    with pytest.raises(NotFoundError, match="not this template's"):
        templates.check(path, "d" * 64)


def test_a_held_lock_makes_a_bounded_wait_then_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    with (
        templates._locked(lock, fcntl.LOCK_EX, timeout=1.0),
        pytest.raises(ConflictError, match="busy"),
        templates._locked(lock, fcntl.LOCK_SH, timeout=0.2),
    ):
        pass
    # free again; readers share
    with (
        templates._locked(lock, fcntl.LOCK_SH, timeout=0.2),
        templates._locked(lock, fcntl.LOCK_SH, timeout=0.2),
    ):
        pass


def test_find_by_prefix(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    _template(templates.root(paths))
    assert templates.find(paths, "c0ff").key == KEY
    with pytest.raises(UsageError, match="invalid template key"):
        templates.find(paths, "c0")
    with pytest.raises(UsageError, match="invalid template key"):
        templates.find(paths, "C0FFEE")
    with pytest.raises(NotFoundError, match="no template beef"):
        templates.find(paths, "beef")
    lab = Lab(paths)
    try:
        templates.remove(lab, KEY)
    finally:
        lab.close()
    assert templates.ls(paths) == []


def test_only_a_backend_that_restores_clones_makes_templates() -> None:
    from uniklab.backends.base import Backend, Handle, InstanceSpec
    from uniklab.backends.qemu import QemuBackend

    class Plain(Backend):
        name = "plain"

    assert templates.can(QemuBackend(accel="tcg"))
    assert not templates.can(Plain())
    with pytest.raises(UsageError, match=r"^the plain backend cannot make templates$"):
        Plain().restore_clone(InstanceSpec("x", Path("k"), None, "", 1, 1, Path("r")), Path())
    with pytest.raises(UsageError, match=r"^the plain backend cannot make templates$"):
        Plain().save_template(Handle(pid=None), Path())


# -- who may be a clone (refusal): no guests ------------------------------------------------
def _manifest(kind: str = "linux-initramfs") -> Manifest:
    return Manifest(
        name="redis", tag="latest", digest="sha256:" + "1" * 64, created=0.0, kind=kind,
        kernel=KernelInfo(release="6.1.0-test", source="host"), compression="gzip",
        size=2, kernel_size=1, initrd_size=1, cmdline="console=ttyS0",
        entrypoint=["/usr/bin/redis-server"], ports=[6379], probe=ProbeSpec(kind="tcp", port=6379),
        memory="128M", files=3, bake_seconds=1.0,
    )  # fmt: skip


QEMU, XEN = registry.get("qemu"), registry.get("xen")


@pytest.mark.parametrize(
    ("engine", "opts", "refused"),
    [
        (QEMU, RunOptions(), None),
        # QEMU's clones keep the template's MAC and address: no bridges
        (QEMU, RunOptions(net=[NicRequest("lab")]), "user-mode network only"),
        # Xen's clones each get their own MAC and ask DHCP again: bridges by DHCP
        (XEN, RunOptions(), None),
        (XEN, RunOptions(net=[NicRequest("xenbr0")]), None),
        (XEN, RunOptions(net=[NicRequest("xenbr0", mac="00:16:3e:00:00:09")]), None),
        (XEN, RunOptions(net=[NicRequest("xenbr0", ip="10.99.0.9/24")]), "by DHCP"),
        (XEN, RunOptions(net=[NicRequest("xenbr0", ip="10.99.0.9/24", gateway="10.99.0.1")]),
         "by DHCP"),
        (QEMU, RunOptions(net=[NicRequest("lab", ip="10.77.0.9/24")]), "user-mode network only"),
        (XEN, RunOptions(restart="on-failure"), "--restart"),
        (XEN, RunOptions(offline=True), "channels"),
    ],
)  # fmt: skip
def test_refusal_rules(engine: registry.BackendType, opts: RunOptions, refused: str | None) -> None:
    why = templates.refusal(opts, _manifest(), engine)
    if refused is None:
        assert why is None
        assert templates.wanted(replace(opts, clone=None), _manifest(), engine)
    else:
        assert why is not None and refused in why
        assert not templates.wanted(replace(opts, clone=None), _manifest(), engine)
        with pytest.raises(UsageError, match=r"^cannot clone redis:latest: "):
            templates.wanted(replace(opts, clone=True), _manifest(), engine)


def test_a_rumprun_image_is_never_a_clone() -> None:
    why = templates.refusal(RunOptions(), _manifest("rumprun"), XEN)
    assert why is not None and "rumprun" in why


def test_a_xen_template_gets_the_clones_bridges_with_fixed_macs() -> None:
    from uniklab.boot import BootRequest
    from uniklab.net.attachment import Attachment

    nics = (
        Attachment("host-bridge", "00:16:3e:11:22:33", bridge="xenbr0", found="10.99.0.7"),
        Attachment("host-bridge", "00:16:3e:11:22:34", bridge="xenbr1"),
    )
    req = BootRequest(
        name="r1", args=[], env={}, disks=(), nics=nics, time_source=None, memory_mb=64,
        vcpus=1, rundir=Path("/run/1"),
    )  # fmt: skip
    t = templates.template_request(_manifest(), req)
    assert [(n.kind, n.bridge, n.mac, n.addr, n.found) for n in t.nics] == [
        ("host-bridge", "xenbr0", templates.TEMPLATE_MAC, None, None),
        ("host-bridge", "xenbr1", "52:54:00:75:6b:02", None, None),
    ]
    # the same template whatever the instance's MACs
    other = replace(req, name="r2", nics=tuple(replace(n, mac="00:16:3e:0:0:1") for n in nics))
    assert templates.template_request(_manifest(), other) == replace(t)


def test_removing_a_template_whose_host_cannot_be_reached_warns_once_and_removes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its meta names a Xen host whose ssh port nothing listens on: one warning, the
    local files go all the same."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = Paths(tmp_path)
    lab = Lab(paths)
    try:
        lab.hosts.add(name="gone", ssh="root@127.0.0.1", port=port, hypervisor="xen")
        path = _template(templates.root(paths))
        meta = json.loads((path / "meta.json").read_text())
        (path / "meta.json").write_text(json.dumps({**meta, "backend": "xen", "host": "gone"}))
        with caplog.at_level("WARNING", logger="uniklab.templates"):
            templates.remove(lab, KEY)
    finally:
        lab.close()
    assert not path.exists()
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "its files on its host stay" in warned[0].getMessage()
