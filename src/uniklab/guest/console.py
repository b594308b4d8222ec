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
