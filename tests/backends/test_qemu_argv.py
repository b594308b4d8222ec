"""Golden test of the QEMU command line: a change to it must be a deliberate one."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from uniklab.backends.base import InstanceSpec
from uniklab.backends.qemu_argv import build_argv
from uniklab.guest.rumprun import RumprunConfig, RumprunNet
from uniklab.net.attachment import Attachment

GOLDEN = Path(__file__).parent.parent / "golden" / "qemu_argv.json"


def _spec(rundir: str = "/run/ukl/7") -> InstanceSpec:
    return InstanceSpec(
        name="r1",
        kernel=Path("/images/x/kernel"),
        initrd=Path("/images/x/initrd"),
        cmdline="reboot=t panic=-1 quiet uniklab.config=eyJ2IjoxfQ",
        memory_mb=128,
        vcpus=1,
        rundir=Path(rundir),
        nics=(
            Attachment(kind="user", mac="52:54:00:12:34:56", forwards=((16379, 6379), (18080, 80))),
        ),
    )


def test_golden_tcg() -> None:
    argv = build_argv(_spec(), accel="tcg", tsc_khz=2596130)
    if os.environ.get("UNIKLAB_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(argv, indent=1) + "\n")
    assert argv == json.loads(GOLDEN.read_text())


def test_kvm_uses_host_cpu_and_no_tsc_hint() -> None:
    argv = build_argv(_spec(), accel="kvm", tsc_khz=2596130)
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "tsc_early_khz" not in argv[argv.index("-append") + 1]


def test_a_template_shares_its_memory_file_and_a_clone_maps_it_privately() -> None:
    """A template's RAM is its memory file (shared: the file holds the RAM its saved state
    leaves out); a clone's is the same file, copy on write, loaded into a paused QEMU."""
    spec = replace(_spec(), memory_file=Path("/t/a,b/memory"))
    template = build_argv(spec, accel="tcg", tsc_khz=None)
    clone = build_argv(spec, accel="tcg", tsc_khz=None, incoming=True)
    backend = "memory-backend-file,id=ram0,size=128M,mem-path=/t/a,,b/memory,share="
    assert template[template.index("-object") + 1] == backend + "on"
    assert clone[clone.index("-object") + 1] == backend + "off"
    for argv in (template, clone):
        assert argv[argv.index("-M") + 1].endswith(",memory-backend=ram0")
    assert "-incoming" not in template
    assert clone[clone.index("-incoming") + 1] == "defer"
    # otherwise the same machine: migration needs the same devices on both sides
    assert [a for a in clone if a not in ("-incoming", "defer")] == [
        a if "share=on" not in a else a.replace("share=on", "share=off") for a in template
    ]
    assert "-object" not in build_argv(_spec(), accel="tcg", tsc_khz=None)


def test_commas_in_paths_are_escaped() -> None:
    argv = build_argv(_spec("/tmp/a,b/7"), accel="tcg", tsc_khz=None)
    qmp = argv[argv.index("-qmp") + 1]
    assert qmp == "unix:/tmp/a,,b/7/qmp.sock,server=on,wait=off"


def test_tap_nic() -> None:
    spec = InstanceSpec(
        name="r2",
        kernel=Path("/k"),
        initrd=Path("/i"),
        cmdline="c",
        memory_mb=64,
        vcpus=2,
        rundir=Path("/r"),
        nics=(Attachment(kind="bridge", mac="00:11:22:33:44:55", tap="ukt1", bridge="br0"),),
    )
    argv = build_argv(spec, accel="tcg", tsc_khz=None, daemonize=False)
    assert "tap,id=n0,ifname=ukt1,script=no,downscript=no" in argv
    assert "virtio-net-device,netdev=n0,mac=00:11:22:33:44:55" in argv
    assert "-daemonize" not in argv


def test_root_disk_is_first_and_read_only_and_there_is_no_initrd() -> None:
    spec = InstanceSpec(
        name="r3",
        kernel=Path("/k"),
        initrd=None,
        cmdline="root=/dev/vda rootfstype=erofs ro init=/init",
        memory_mb=32,
        vcpus=1,
        rundir=Path("/r"),
        disks=(Path("/data.img"),),
        root_disk=Path("/images/x/root.erofs"),
        acpi=False,
    )
    argv = build_argv(spec, accel="tcg", tsc_khz=None, daemonize=False)
    assert "-initrd" not in argv
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives == [
        "id=d0,file=/images/x/root.erofs,format=raw,if=none,readonly=on",
        "id=d1,file=/data.img,format=raw,if=none,readonly=on",
    ]


def test_a_rumprun_guest_boots_as_rumprun_qemu_does() -> None:
    """rumprun's launcher (app-tools/rumprun, run_qemu): a PCI machine, virtio-net and
    virtio-blk on PCI, the JSON config as the command line, nothing of the Linux path."""
    spec = InstanceSpec(
        name="rr",
        kernel=Path("/images/x/kernel-qemu"),
        initrd=None,
        cmdline="",
        memory_mb=64,
        vcpus=1,
        rundir=Path("/r"),
        nics=(Attachment(kind="user", mac="52:54:00:00:00:01", forwards=((6379, 6379),)),),
        disks=(Path("/images/x/disk-data.iso"),),
        acpi=False,
        time_service=False,
        rumprun=RumprunConfig(
            argv=["redis-server", "/data/conf/redis.conf"],
            net=[RumprunNet(method="static", addr="10.0.2.15/24", gw="10.0.2.2")],
            mounts=["/data"],
        ),
    )
    argv = build_argv(spec, accel="tcg", tsc_khz=2_000_000, daemonize=False)
    assert argv[argv.index("-M") + 1] == "pc"
    assert "-cpu" not in argv  # QEMU's default CPU, as rumprun's launcher
    assert "isa-debug-exit,iobase=0xf4,iosize=0x04" in argv
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01" in argv
    assert "virtio-blk-pci,drive=d0" in argv
    assert not any("guestfwd" in a for a in argv)
    assert json.loads(argv[argv.index("-append") + 1]) == {
        "blk": {"source": "dev", "path": "/dev/ld0a", "fstype": "blk", "mountpoint": "/data"},
        "net": {"if": "vioif0", "type": "inet", "method": "static", "addr": "10.0.2.15",
                "mask": "24", "gw": "10.0.2.2"},
        "cmdline": "redis-server /data/conf/redis.conf",
    }  # fmt: skip


def test_noapictimer_only_for_one_vcpu_tcg_guests_without_acpi() -> None:
    def append(**kw: object) -> str:
        base = {
            "name": "t", "kernel": Path("/k"), "initrd": None, "cmdline": "c",
            "memory_mb": 32, "vcpus": 1, "rundir": Path("/r"), "acpi": False,
        }  # fmt: skip
        accel = str(kw.pop("accel", "tcg"))
        spec = InstanceSpec(**{**base, **kw})  # type: ignore[arg-type]
        argv = build_argv(spec, accel=accel, tsc_khz=1000)
        return argv[argv.index("-append") + 1]

    assert "noapictimer" in append()
    assert "noapictimer" not in append(vcpus=2)
    assert "noapictimer" not in append(acpi=True)
    assert "noapictimer" not in append(accel="kvm")
    assert "tsc=reliable" in append() and "tsc=reliable" not in append(accel="kvm")
