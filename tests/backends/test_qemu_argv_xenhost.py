"""Golden test of the virtual Xen host's QEMU command line (``uniklab lab up``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from uniklab.backends.qemu_argv import XenHostSpec, build_xenhost_argv

GOLDEN = Path(__file__).parent.parent / "golden" / "qemu_argv_xenhost.json"


def _spec(
    rundir: str = "/ukl/labs/xenlab/run", initrd: str = "/ukl/labs/xenlab/dom0.initrd"
) -> XenHostSpec:
    return XenHostSpec(
        name="xenlab",
        xen=Path("/ukl/cache/xen/root-4.17/boot/xen-4.17-amd64"),
        xen_args="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1",
        dom0_kernel=Path("/boot/vmlinuz-dom0"),
        dom0_args="console=hvc0 earlyprintk=xen quiet",
        dom0_initrd=Path(initrd),
        rundir=Path(rundir),
        ssh_port=40022,
    )


def test_golden() -> None:
    argv = build_xenhost_argv(_spec())
    if os.environ.get("UNIKLAB_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(argv, indent=1) + "\n")
    assert argv == json.loads(GOLDEN.read_text())


def test_dom0_kernel_and_initrd_are_multiboot_modules() -> None:
    argv = build_xenhost_argv(_spec())
    assert argv[argv.index("-kernel") + 1].endswith("xen-4.17-amd64")
    assert argv[argv.index("-initrd") + 1] == (
        "/boot/vmlinuz-dom0 console=hvc0 earlyprintk=xen quiet,/ukl/labs/xenlab/dom0.initrd"
    )
    # No SMAP, XSAVE or AVX for Xen under TCG (build_xenhost_argv says why).
    assert argv[argv.index("-cpu") + 1] == "max,-smap,-xsave,-avx,-avx2"
    # One TCG thread for the lab's two vCPUs (build_xenhost_argv says why).
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"


def test_commas_in_module_paths_are_escaped() -> None:
    argv = build_xenhost_argv(_spec("/tmp/a,b/run", "/tmp/a,b/dom0.initrd"), daemonize=False)
    assert argv[argv.index("-initrd") + 1].endswith(",/tmp/a,,b/dom0.initrd")
    assert "-daemonize" not in argv
    assert argv[argv.index("-qmp") + 1] == "unix:/tmp/a,,b/run/qmp.sock,server=on,wait=off"


def test_ssh_forward_on_loopback_only() -> None:
    argv = build_xenhost_argv(_spec())
    assert "user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22" in argv
