"""Kernel config fragments: parsing, merging over tinyconfig, the dropped-option check, the
cache key, and what the baker reads from a kernel's .config."""

from __future__ import annotations

from pathlib import Path

import pytest

from uniklab.bake.kernel_choice import KernelChoice
from uniklab.errors import UsageError
from uniklab.kernel import config as kconfig

TINY = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) 12.2.0"
# CONFIG_NET is not set
CONFIG_KERNEL_XZ=y
# CONFIG_KERNEL_LZ4 is not set
CONFIG_PRINTK=y
CONFIG_LOCALVERSION=""
"""


def frag(name: str, text: str) -> kconfig.Fragment:
    return kconfig.Fragment(name, text)


def test_parse_reads_set_unset_and_values() -> None:
    opts = kconfig.parse(TINY)
    assert opts["CONFIG_NET"] == "n"
    assert opts["CONFIG_KERNEL_XZ"] == "y"
    assert opts["CONFIG_LOCALVERSION"] == '""'
    assert "CONFIG_CC_VERSION_TEXT" in opts


def test_parse_rejects_garbage_with_its_line() -> None:
    with pytest.raises(UsageError, match=r"fragment x:2: not a kconfig line"):
        kconfig.parse("CONFIG_A=y\nCONFIG_B y\n", where="fragment x")


def test_merge_replaces_old_lines_and_appends_in_fragment_order() -> None:
    a = frag("a", "CONFIG_NET=y\nCONFIG_KERNEL_LZ4=y\nCONFIG_INET=y\n")
    b = frag("b", '# CONFIG_INET is not set\nCONFIG_LOCALVERSION="-uniklab"\n')
    merged = kconfig.merge(TINY, [a, b])
    lines = merged.splitlines()
    assert "# CONFIG_NET is not set" not in lines
    assert "# CONFIG_KERNEL_LZ4 is not set" not in lines
    assert 'CONFIG_LOCALVERSION=""' not in lines
    assert "CONFIG_KERNEL_XZ=y" in lines  # a choice's old member stays; olddefconfig settles it
    # The later fragment wins, and the appended lines come last (Kconfig reads them last).
    assert lines[-4:] == [
        "CONFIG_NET=y",
        "CONFIG_KERNEL_LZ4=y",
        "# CONFIG_INET is not set",
        'CONFIG_LOCALVERSION="-uniklab"',
    ]
    assert kconfig.parse(merged)["CONFIG_INET"] == "n"


def test_dropped_names_every_option_kconfig_lost() -> None:
    fragments = [frag("a", "CONFIG_NET=y\nCONFIG_PACKET=y\n# CONFIG_MODULES is not set\n")]
    final = "CONFIG_NET=y\n# CONFIG_PACKET is not set\n"
    assert kconfig.dropped(final, fragments) == ["CONFIG_PACKET=y (got unset)"]
    final_value = "CONFIG_NET=m\nCONFIG_PACKET=y\n"
    assert kconfig.dropped(final_value, fragments) == ["CONFIG_NET=y (got m)"]
    assert kconfig.dropped("CONFIG_NET=y\nCONFIG_PACKET=y\n", fragments) == []


def test_packaged_fragments_parse_and_profiles_resolve() -> None:
    for profile in kconfig.PROFILES:
        frags = kconfig.profile_fragments(profile)
        assert frags[0].name == "base"
        assert all(f.options for f in frags)
    base = kconfig.wanted_options(kconfig.profile_fragments("microvm"))
    # What the guest init and the microvm boot depend on.
    for sym in (
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
        "CONFIG_PACKET",
        "CONFIG_DEVTMPFS",
        "CONFIG_RTC_DRV_CMOS",
        "CONFIG_RD_LZ4",
        "CONFIG_MULTIUSER",
        "CONFIG_BINFMT_SCRIPT",
    ):
        assert base[sym] == "y", sym
    xen = kconfig.wanted_options(kconfig.profile_fragments("xen"))
    assert xen["CONFIG_XEN_PV"] == "y" and "CONFIG_XEN_PV" not in base
    with pytest.raises(UsageError, match="unknown kernel profile"):
        kconfig.profile_fragments("nope")


def test_cache_key_changes_with_each_input_and_only_then() -> None:
    f1 = [frag("base", "CONFIG_NET=y\n")]
    key = kconfig.cache_key(source_version="6.1.1", gcc_version="gcc 12", fragments=f1)
    same = kconfig.cache_key(source_version="6.1.1", gcc_version="gcc 12", fragments=list(f1))
    assert key == same and len(key) == 16
    others = [
        kconfig.cache_key(source_version="6.1.2", gcc_version="gcc 12", fragments=f1),
        kconfig.cache_key(source_version="6.1.1", gcc_version="gcc 13", fragments=f1),
        kconfig.cache_key(
            source_version="6.1.1", gcc_version="gcc 12", fragments=[frag("base", "CONFIG_NET=n\n")]
        ),
        kconfig.cache_key(
            source_version="6.1.1",
            gcc_version="gcc 12",
            fragments=[*f1, frag("xen", "CONFIG_XEN=y\n")],
        ),
    ]
    assert len({key, *others}) == 5


def test_kernel_choice_reads_acpi_and_platforms_from_its_config() -> None:
    cmdline_devices = "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n"
    micro = KernelChoice(
        "specialised", Path("/k"), "6.1-uniklab", "specialised:microvm:k", cmdline_devices
    )
    assert micro.acpi is False and micro.platforms == ["qemu"] and not micro.wants_modules
    xen = KernelChoice("specialised", Path("/k"), "r", "l", cmdline_devices + "CONFIG_XEN_PV=y\n")
    assert xen.platforms == ["qemu", "xen"]
    debian = KernelChoice("host", Path("/k"), "r", "host", "CONFIG_VIRTIO_MMIO=m\n")
    assert debian.acpi is True and debian.wants_modules
    unknown = KernelChoice("path", Path("/k"), "r", "path", None)
    assert unknown.acpi is True and not unknown.wants_modules


def test_built_with_reads_the_images_kernel_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uniklab.bake.kernel_choice import built_with
    from uniklab.kernel import build as kbuild

    monkeypatch.setenv("UNIKLAB_KERNEL_CACHE", str(tmp_path))
    entry = kbuild.BuiltKernel("microvm", "k1", tmp_path / "k1")
    entry.dir.mkdir()
    entry.config_path.write_text("CONFIG_VIRTIO=y\nCONFIG_VIRTIO_CONSOLE=y\n")
    assert built_with("specialised:microvm:k1", "CONFIG_VIRTIO_CONSOLE")
    assert not built_with("specialised:microvm:k1", "CONFIG_XEN_GNTDEV")
    # A build this machine does not have, a host kernel, a path: not known to have it.
    assert not built_with("specialised:microvm:k2", "CONFIG_VIRTIO_CONSOLE")
    assert not built_with("host", "CONFIG_VIRTIO_CONSOLE")
    assert not built_with("specialised:microvm:../k1", "CONFIG_VIRTIO_CONSOLE")


def test_the_specialised_kernels_carry_what_channels_need() -> None:
    """virtio-serial on QEMU; on Xen, a vchan's event channel, grants and grant mapping."""
    wanted = kconfig.wanted_options(kconfig.profile_fragments("microvm"))
    assert wanted["CONFIG_VIRTIO_CONSOLE"] == "y"
    xen = kconfig.wanted_options(kconfig.profile_fragments("xen"))
    for sym in (
        "CONFIG_VIRTIO_CONSOLE",
        "CONFIG_XEN_DEV_EVTCHN",
        "CONFIG_XEN_GNTDEV",
        "CONFIG_XEN_GRANT_DEV_ALLOC",
    ):
        assert xen[sym] == "y", sym
