"""What `run` decides by itself: a Xen guest without --net joins the host's xenbr0 (as
xl's vif does), and one stderr line when /dev/kvm is here but the guest runs under TCG.

The Xen host is an inventory entry nobody contacts: a stand-in backend records the spec
`run` hands it and stops there (the run then removes what it made, as on any failure)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from uniklab.backends.base import InstanceSpec
from uniklab.bake.image import MANIFEST, KernelInfo, Manifest
from uniklab.bake.recipe import ProbeSpec
from uniklab.cli import run as run_cli
from uniklab.cli.main import main
from uniklab.lab import Lab
from uniklab.paths import Paths


class Stop(Exception):
    """Raised by the stand-in backend once it has the spec."""


class Recorder:
    name = "xen"

    def __init__(self) -> None:
        self.specs: list[InstanceSpec] = []

    def create(self, spec: InstanceSpec) -> None:
        self.specs.append(spec)
        raise Stop

    def destroy(self, handle: object, *, timeout: float = 10.0) -> None:
        pass


@pytest.fixture
def xen_lab(home: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    lab = Lab(Paths(home))
    lab.hosts.add(name="xd3", ssh="root@192.0.2.7", hypervisor="xen")
    m = Manifest(
        name="redis", tag="latest", digest="sha256:" + "1" * 64, created=time.time(),
        kernel=KernelInfo(release="6.1.0-test", source="host"), compression="gzip",
        size=2, kernel_size=1, initrd_size=1, cmdline="console=ttyS0",
        entrypoint=["/usr/bin/redis-server"], ports=[6379], probe=ProbeSpec(kind="tcp", port=6379),
        memory="128M", files=3, bake_seconds=1.0,
    )  # fmt: skip
    d = home / "images" / m.digest.replace(":", "-")
    d.mkdir(parents=True)
    (d / "kernel").write_bytes(b"k")
    (d / "initrd").write_bytes(b"i")
    (d / MANIFEST).write_text(m.model_dump_json())
    lab.store.put_image("redis", "latest", m.digest)
    lab.close()
    recorder = Recorder()
    monkeypatch.setattr(Lab, "backend", lambda self, *a, **kw: recorder)
    return recorder


def _bridges(spec: InstanceSpec) -> list[tuple[str, str | None]]:
    return [(n.kind, n.bridge) for n in spec.nics]


def test_a_xen_guest_joins_xenbr0_by_default(xen_lab: Recorder, home: Path) -> None:
    with pytest.raises(Stop):
        main(["run", "redis", "--host", "xd3", "--name", "r1"])
    assert _bridges(xen_lab.specs[0]) == [("host-bridge", "xenbr0")]
    lab = Lab(Paths(home))
    assert lab.store.instances() == []  # removed as on any failure
    lab.close()


def test_a_named_bridge_wins(xen_lab: Recorder) -> None:
    with pytest.raises(Stop):
        main(["run", "redis", "--host", "xd3", "--net", "br1", "--net", "br2"])
    assert _bridges(xen_lab.specs[0]) == [("host-bridge", "br1"), ("host-bridge", "br2")]


def test_publishing_on_xen_is_still_refused(
    xen_lab: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "redis", "--host", "xd3", "-p", "6379:6379"]) == 2
    assert "joins a bridge there: give --net BRIDGE (and no -p)" in capsys.readouterr().err
    assert xen_lab.specs == []


def _view(accel: str, backend: str = "qemu", host: str = "local") -> SimpleNamespace:
    row = SimpleNamespace(backend=backend, host=host, runtime={"accel": accel})
    return SimpleNamespace(name="r1", row=row)


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIKLAB_ACCEL", raising=False)


def test_tcg_with_dev_kvm_warns_once(
    probed: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kvm = tmp_path / "kvm"
    kvm.touch()
    run_cli._warn_if_tcg(_view("tcg"), kvm)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("warning: r1 runs under TCG (slow): /dev/kvm is here")
    assert "uniklab doctor" in err


@pytest.mark.parametrize(
    "view,kvm_here,env",
    [
        (_view("kvm"), True, None),  # KVM runs
        (_view("tcg"), False, None),  # no /dev/kvm: TCG is what was expected
        (_view("tcg"), True, "tcg"),  # asked for
        (_view("tcg", backend="xen"), True, None),
        (_view("tcg", host="xd3"), True, None),
    ],
)
def test_no_warning(
    view: SimpleNamespace,
    kvm_here: bool,
    env: str | None,
    probed: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if env:
        monkeypatch.setenv("UNIKLAB_ACCEL", env)
    kvm = tmp_path / "kvm"
    if kvm_here:
        kvm.touch()
    run_cli._warn_if_tcg(view, kvm)  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""
