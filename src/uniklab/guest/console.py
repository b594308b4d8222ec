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
