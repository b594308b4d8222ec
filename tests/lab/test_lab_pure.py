from __future__ import annotations

from uniklab import validate
from uniklab.lab import exit_reason
from uniklab.run_plan import instance_mac


def test_instance_mac_is_stable_local_unicast() -> None:
    mac = instance_mac("r1", 7)
    assert mac == instance_mac("r1", 7) != instance_mac("r1", 8)
    assert validate.mac(mac) == mac
    assert int(mac[:2], 16) & 0b10  # locally administered


def test_exit_reasons() -> None:
    assert exit_reason("x\nuniklab-init: app exited status 0\n") == (
        "exited",
        "app exited status 0",
    )
    assert exit_reason("uniklab-init: app exited status 1") == ("crashed", "app exited status 1")
    assert exit_reason("uniklab-init: app killed by signal 9")[0] == "crashed"
    state, why = exit_reason("[ 1.0] Kernel panic - not syncing: Out of memory\n")
    assert state == "crashed" and "Out of memory" in why
    assert exit_reason("") == ("crashed", "hypervisor process died")


def test_a_silent_console_gives_the_backends_word() -> None:
    assert exit_reason("") == ("crashed", "hypervisor process died")
    gone = "domain r1 is gone from dom0"
    assert exit_reason("uniklab-init: start\n", gone) == ("crashed", gone)
    # what the console says wins
    assert exit_reason("uniklab-init: app exited status 3\n", gone)[1] == "app exited status 3"
