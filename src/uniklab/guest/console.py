"""What the guest init says on the console, as the host reads it: one place for the words
that init.c prints (``uniklab-init: …``) and the patterns that recognise them."""

from __future__ import annotations

import re

PREFIX = "uniklab-init:"
EXEC = f"{PREFIX} exec"  # the app is being started: the default readiness marker
FATAL = f"{PREFIX} fatal:"  # the init gave up (a bad config, a missing module…)
EXIT_RE = re.compile(rf"{PREFIX} app (exited status \d+|killed by signal \d+)")
# "uniklab-init: net IF MAC ADDR/PREFIX via dhcp|static …"
NET_RE = re.compile(rf"{PREFIX} net (\S+) (\S+) (\S+) via (\S+)")

# What a rumprun unikernel says (rumprun's lib/librumprun_base/rumprun.c and its
# platform's halt): the app's main() is called, returns, or the kernel panics.
RUMPRUN_CALLING_RE = re.compile(r'=== calling "([^"]*)" main\(\) ===')
RUMPRUN_RETURNED_RE = re.compile(r'=== main\(\) of "([^"]*)" returned (\d+) ===')
RUMPRUN_EXIT_RE = re.compile(r"=== (?:ERROR: )?_exit\((\d+)\) called ===")
RUMPRUN_FATAL = ("PANIC:", "FATAL TRAP", "panic:")

# What the host writes to the init on the console (guest/ctl.h): an escape-prefixed line.
CONTROL_PREFIX = "\x1buniklab:"
STOP_HEARD = f"{PREFIX} stop requested"  # the init's answer to a "stop" line
RESTORED_HEARD = f"{PREFIX} restored: clock"  # its answer to a clone's "restored" (set, kept)


def control_line(verb: str, *args: str) -> bytes:
    """One control line for the init, e.g. ``control_line("stop", "10")``."""
    return (CONTROL_PREFIX + " ".join((verb, *args)) + "\n").encode()


def app_exit_status(console: str) -> int | None:
    """The app's exit status as the last "app exited"/"killed by signal" line says (a
    signal S as 128+S, like a shell); None if the console says neither."""
    found = EXIT_RE.findall(console)
    if not found:
        return None
    word, number = found[-1].rsplit(" ", 1)
    return int(number) + (128 if word.startswith("killed") else 0)
