"""libxl's raw errors (recorded from Xen 4.17 on the virtual Xen host) become one line
that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from uniklab.backends.xl_errors import explain, unreadable_state

FIX = Path(__file__).parent.parent / "fixtures" / "xen"


def test_a_guest_too_big_for_its_memory_says_the_minimum_and_the_way_out() -> None:
    # Debian's kernel and a Linux initramfs at the runbook's 64 MB (`uniklab run redis
    # --host xenlab --net xenbr0 --memory 64M`): libxl says "No such file or directory".
    said = explain((FIX / "xl_create_64M_linux.stderr").read_text(), memory_mb=64)
    assert said == (
        "64 MB is too little to load this guest: its kernel takes 58.0 MB, so it needs more "
        "than 74 MB: give it more memory (-m), or bake a smaller image (uniklab bake "
        "redis-static --kernel specialised:xen --root initramfs fits in 64 MB)"
    )
    # The specialised Xen kernel and a static Redis at 32 MB: the initrd no longer fits.
    said = explain((FIX / "xl_create_32M_static.stderr").read_text(), memory_mb=32)
    assert said.startswith("32 MB is too little to load this guest: its initrd takes 2.0 MB")
    assert "needs more than 35 MB" in said
    assert "\n" not in said


def test_a_taken_name_names_the_domain() -> None:
    said = explain((FIX / "xl_create_exists.stderr").read_text())
    assert said.startswith("a domain named redis already exists") and "xl destroy redis" in said


def test_an_unknown_error_is_libxls_first_message_without_its_source_location() -> None:
    said = explain((FIX / "xl_destroy_id_missing.stderr").read_text())
    assert said == "Non-existant domain"


def test_nothing_said() -> None:
    assert explain("Parsing config from /x.cfg\n") == "no output"


def test_a_guest_that_cannot_suspend_is_said_so() -> None:
    # `xl save` of the rumprun Redis (xen_pv): its Mini-OS never acknowledges the request.
    said = explain((FIX / "xl_save_no_suspend.stderr").read_text())
    assert said.startswith("the guest did not answer Xen's suspend request")
    assert "rumprun" in said and "\n" not in said


@pytest.mark.parametrize(
    "fixture", ["xl_restore_truncated", "xl_restore_missing", "xl_restore_not_a_save"]
)
def test_a_checkpoint_gone_or_damaged_is_told_from_other_restore_failures(fixture: str) -> None:
    assert unreadable_state((FIX / f"{fixture}.stderr").read_text())


def test_other_failures_are_not_a_damaged_checkpoint() -> None:
    for fixture in ("xl_create_exists", "xl_create_64M_linux", "xl_save_no_suspend"):
        assert not unreadable_state((FIX / f"{fixture}.stderr").read_text()), fixture
