from __future__ import annotations

import os
from pathlib import Path

import pytest

from uniklab.backends.xen_config import XenDisk, XenDomain, XenVif, build_config
from uniklab.errors import UsageError

GOLDEN = Path(__file__).parent.parent / "golden" / "xen_redis.cfg"


def _domain(**kw: object) -> XenDomain:
    fields: dict[str, object] = dict(
        name="redis",
        kernel="/var/lib/uniklab/images/ab12/kernel",
        ramdisk="/var/lib/uniklab/images/ab12/initrd",
        cmdline="reboot=t panic=-1 quiet uniklab.config=eyJ2IjoxfQ",
        memory_mb=64,
        vcpus=1,
        vifs=(XenVif("00:11:22:33:44:55", "xenbr0"),),
    )
    fields.update(kw)
    return XenDomain(**fields)  # type: ignore[arg-type]


def test_golden() -> None:
    text = build_config(_domain())
    if os.environ.get("UNIKLAB_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", 'x"; y'),
        ("cmdline", "a\nb"),
        ("kernel", "/a'b"),
        ("ramdisk", "c:\\x"),
    ],
)
def test_refuses_quote_breakers(field: str, value: str) -> None:
    with pytest.raises(UsageError):
        build_config(_domain(**{field: value}))


def test_vif_script() -> None:
    text = build_config(_domain(vifs=(XenVif("00:16:3e:00:00:01", "br1", "/etc/x/vif"),)))
    assert 'vif = [ "mac=00:16:3e:00:00:01,bridge=br1,script=/etc/x/vif" ]' in text


def test_a_rumprun_domain_has_no_ramdisk_or_command_line_and_its_own_disks() -> None:
    """rumprun's launcher (run_xen) writes kernel=, memory, vif, disk and no extra=: the
    config goes to xenstore."""
    text = build_config(
        _domain(
            ramdisk=None,
            cmdline=None,
            disks=(XenDisk("/var/lib/uniklab/blobs/ab12", "xvda"),),
        )
    )
    assert "ramdisk" not in text and "extra" not in text
    spec = "format=raw,vdev=xvda,access=rw,script=block,target=/var/lib/uniklab/blobs/ab12"
    assert f'disk = [ "{spec}" ]' in text
