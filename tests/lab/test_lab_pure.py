from __future__ import annotations

from uniklab import validate
from uniklab.lab import console_verdict, exit_reason, last_word
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


# The end of a rumprun guest's console, as CI recorded it (Xen, Redis 3.0.6, a DIAGNOSTIC
# rump kernel).
RUMP_PANIC = """\
3:M 01 Dec 00:17:09.209 * The server is now ready to accept connections on port 6379
panic: kernel diagnostic assertion "mutex_owned(&fdp->fd_lock)" failed: file "x/kern_event.c"
rump kernel halting...
PANIC: rumpuser panic
port 4 still bound!
minios: halting, reason=0
"""


def test_a_rump_kernel_panic_is_told_by_its_own_line() -> None:
    state, why = exit_reason(RUMP_PANIC)
    assert state == "crashed"
    assert why.startswith('panic: kernel diagnostic assertion "mutex_owned(&fdp->fd_lock)"')
    assert last_word(RUMP_PANIC) == why
    assert console_verdict("uniklab-init: start\n") is None and last_word("") == ""
