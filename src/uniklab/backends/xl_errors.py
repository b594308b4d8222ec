"""libxl's errors, translated: what `xl create` printed, as one line saying what to do.

xl prints a cascade of ``libxl: error: FILE:LINE:FUNCTION: Domain N:MESSAGE`` lines,
most of them consequences (the domain it then fails to destroy).  The first line that
names a cause is matched against what a user can act on; otherwise the first error's
message is given without libxl's source location.
"""

from __future__ import annotations

import re

_LOCATION = re.compile(r"^libxl: error: \S+:\d+:\S+: (?:Domain \d+:)?")
# (pattern in xl's output, what to say); {memory} is the domain's memory in MB.
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"xc_dom_build_image failed|segment \w+ too large|xc_dom_alloc_segment"),
        "{memory} MB is too little for this guest's kernel and initrd to be loaded: "
        "give it more memory (-m 128M), or bake a smaller image "
        "(uniklab bake … --kernel specialised)",
    ),
    (
        re.compile(r'Domain with name "([^"]+)" already exists'),
        "a domain named {0} already exists on the host: destroy it there (xl destroy {0}) "
        "or choose another --name",
    ),
    (
        re.compile(r"failed to get free memory|Cannot allocate memory|not enough memory"),
        "the host has not enough free memory for {memory} MB: give less (-m) or free some "
        "(xl list; uniklab ps)",
    ),
    (
        re.compile(r"Unable to (?:open|read) kernel|kernel .*(?:No such file|not found)"),
        "the host cannot read the guest's kernel: check the disk space in /var/lib/uniklab "
        "there (the image is copied again on the next run)",
    ),
)


def explain(output: str, *, memory_mb: int | None = None) -> str:
    """One line for the user from xl's stdout/stderr."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pattern, advice in _CAUSES:
        for ln in lines:
            m = pattern.search(ln)
            if m:
                mem = "this" if memory_mb is None else str(memory_mb)
                return advice.format(*m.groups(), memory=mem)
    errors = [_LOCATION.sub("", ln) for ln in lines if ln.startswith("libxl: error:")]
    if errors:
        return errors[0]
    others = [ln for ln in lines if not ln.startswith("Parsing config from")]
    return others[-1] if others else "no output"
