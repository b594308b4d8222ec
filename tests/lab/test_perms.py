"""What uniklab keeps is its user's alone: the store, runtime directories and their sockets,
DHCP leases, SSH control sockets and lab keys are owner-only; images copied to a Xen host are
verified by digest.

That a recipe's files cannot escape its directory is shown in
``tests/bake/test_recipe.py::test_files_from_recipe_dir_and_escape`` (``../x`` and a symlink
leading out are refused) and ``test_builtin_recipes_may_copy_host_files``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.leaks import processes_mentioning
from uniklab.backends import xen
from uniklab.backends.xen import XenBackend
from uniklab.errors import HostUnreachableError, UniklabError
from uniklab.executor import LocalExecutor, Result, local
from uniklab.hosts import ssh, virtual_xen
from uniklab.lab import Lab, RunOptions
from uniklab.net import netns
from uniklab.net.service import NetworkSpec
from uniklab.paths import Paths

pytestmark = pytest.mark.faults


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def private(path: Path) -> bool:
    """No permission bit for group or others."""
    return mode(path) & 0o077 == 0


def test_store_and_home_are_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "h"
    old = os.umask(0o022)  # a usual umask: uniklab must not rely on a stricter one
    try:
        lab = Lab(Paths(home))
        lab.store.put_image("x", "latest", "sha256:0")  # a write, so the WAL exists
        lab.reconcile()
    finally:
        os.umask(old)
    try:
        for d in (home, home / "images", home / "cache", home / "run"):
            assert mode(d) == 0o700, f"{d}: {mode(d):o}"
        assert mode(home / "state.db") == 0o600
        for extra in ("state.db-wal", "state.db-shm"):
            if (home / extra).exists():
                assert private(home / extra), f"{extra}: {mode(home / extra):o}"
    finally:
        lab.close()


def test_ssh_control_dir_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    d = ssh._control_dir()
    assert mode(d) == 0o700
    # One that someone else could reach is refused, not used.
    d.chmod(0o755)
    with pytest.raises(HostUnreachableError, match="not a private directory"):
        ssh._control_dir()


def test_lab_keys_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        pub = virtual_xen._ensure_key(tmp_path / "id_lab", "uniklab-test")
    finally:
        os.umask(old)
    assert pub.startswith("ssh-ed25519 ")
    assert mode(tmp_path / "id_lab") == 0o600
    # A key whose mode was loosened is tightened again on the next use.
    (tmp_path / "id_lab").chmod(0o644)
    virtual_xen._ensure_key(tmp_path / "id_lab", "uniklab-test")
    assert mode(tmp_path / "id_lab") == 0o600


class CorruptingExecutor(LocalExecutor):
    """This machine, except that every file moved into place gets a byte flipped: a copy
    to the Xen host that went wrong on the way."""

    name = "corrupting"

    def __init__(self) -> None:
        self.moves: list[str] = []

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        timeout: float = 60,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        r = local.run(argv, timeout=timeout, check=check, input=input, env=env, cwd=cwd)
        if str(argv[0]) == "mv":
            target = Path(str(argv[-1]))
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))
            self.moves.append(str(target))
        return r


def test_xen_image_copy_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "remote"
    monkeypatch.setattr(xen, "REMOTE_ROOT", remote)
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_bytes(b"k" * 4096)
    initrd.write_bytes(b"i" * 4096)
    ex = CorruptingExecutor()
    with pytest.raises(UniklabError, match=r"image copy failed verification \(kernel, initrd\)"):
        XenBackend(ex).ensure_image(kernel, initrd)
    assert len(ex.moves) == 2
    # An honest copy passes, and a second call copies nothing.
    k, i = XenBackend(local).ensure_image(kernel, initrd)
    assert Path(str(k)).read_bytes() == kernel.read_bytes()
    assert Path(str(i)).read_bytes() == initrd.read_bytes()


@pytest.mark.e2e
def test_runtime_dir_and_sockets_are_owner_only(baked_home: Path) -> None:
    """A QEMU instance (not waited for: its files exist once QEMU is up)."""
    home = Path(tempfile.mkdtemp(prefix="uklp-", dir="/tmp"))
    os.system(f"cp -a {baked_home}/images {baked_home}/cache {baked_home}/state.db {home}/")
    old = os.umask(0o022)
    lab = Lab(Paths(home))
    try:
        view = lab.run("redis", RunOptions(name="perm", wait=False))
        rundir = Path(view.row.runtime["rundir"])
        assert mode(rundir) == 0o700
        socks = [p for p in rundir.iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]
        assert {p.name for p in socks} >= {"qmp.sock", "console.sock"}
        for p in rundir.iterdir():
            assert private(p), f"{p.name}: {mode(p):o}"
        lab.destroy("perm")
        assert not rundir.exists()
    finally:
        os.umask(old)
        for row in lab.store.instances():
            lab.destroy(row.name)
        lab.close()
        leftover = processes_mentioning(str(home))
        os.system(f"rm -rf {home}")
    assert leftover == []


@pytest.mark.root
def test_dhcp_lease_dir_is_owner_only(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="uklp-", dir="/tmp"))
    ns = f"uklperm{os.getpid() % 10000}"
    old = os.umask(0o022)
    lab = Lab(Paths(home))
    try:
        row = lab.networks.create(NetworkSpec("permnet", "10.93.0.0/24", None, ns))
        rundir = Path(row.rundir)
        assert mode(rundir) == 0o700
        assert private(rundir.parent), f"{rundir.parent}: {mode(rundir.parent):o}"
        # The leases and the log name guests; dnsmasq's pid file is readable, but only
        # through the owner-only directory.
        for p in (rundir / "dnsmasq.leases", rundir / "dnsmasq.log"):
            assert private(p), f"{p.name}: {mode(p):o}"
    finally:
        os.umask(old)
        for n in lab.store.networks():
            lab.networks.rm(n.name, [])
        lab.close()
        os.system(f"rm -rf {home}")
    assert not netns.exists(ns)
    assert processes_mentioning(str(home)) == []
