"""libxl's errors, translated: what `xl create` printed, as one line saying what to do.

xl prints a cascade of ``libxl: error: FILE:LINE:FUNCTION: Domain N:MESSAGE`` lines,
most of them consequences (the domain it then fails to destroy).  The first line that
names a cause is matched against what a user can act on; otherwise the first error's
message is given without libxl's source location.
"""

from __future__ import annotations

import re

_LOCATION = re.compile(r"^libxl: error: \S+:\d+:\S+: (?:Domain \d+:)?")
# xc_dom_chk_alloc_pages: "segment kernel too large (0x3a00 > 0x4000 - 0x1000 pages)":
# the segment's pages > the domain's pages - those already used.
_SEGMENT = re.compile(
    r"segment (\w+) too large \((0x[0-9a-f]+) > (0x[0-9a-f]+) - (0x[0-9a-f]+) pages"
)
_SEGMENT_NAMES = {"module0": "initrd"}
PAGE = 4096
FITS_64M = "uniklab bake redis-static --kernel specialised:xen --root initramfs fits in 64 MB"
# (pattern in xl's output, what to say); {memory} is the domain's memory in MB.
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"xc_dom_build_image failed"),
        "{memory} MB is too little for this guest's kernel and initrd to be loaded: give it "
        f"more memory (-m), or bake a smaller image ({FITS_64M})",
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
        re.compile(r"guest didn't acknowledge suspend|did not respond to suspend request"),
        "the guest did not answer Xen's suspend request, so xl cannot save it (its kernel "
        "has no suspend: rumprun's Mini-OS has none); it runs on as before",
    ),
    (
        re.compile(r"Unable to (?:open|read) kernel|kernel .*(?:No such file|not found)"),
        "the host cannot read the guest's kernel: check the disk space in /var/lib/uniklab "
        "there (the image is copied again on the next run)",
    ),
)


def cause(output: str, *, memory_mb: int | None = None) -> str | None:
    """One line for a failure whose cause is known (what to do), else None."""
    mem = "this" if memory_mb is None else str(memory_mb)
    seg = _SEGMENT.search(output)
    if seg:
        name = seg.group(1)
        need, used = int(seg.group(2), 16), int(seg.group(4), 16)
        least = -(-(used + need) * PAGE // 2**20)
        return (
            f"{mem} MB is too little to load this guest: its "
            f"{_SEGMENT_NAMES.get(name, name)} takes {need * PAGE / 2**20:.1f} MB, so it "
            f"needs more than {least} MB: give it more memory (-m), or bake a smaller "
            f"image ({FITS_64M})"
        )
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pattern, advice in _CAUSES:
        for ln in lines:
            m = pattern.search(ln)
            if m:
                return advice.format(*m.groups(), memory=mem)
    return None


def explain(output: str, *, memory_mb: int | None = None) -> str:
    """One line for the user from xl's stdout/stderr: the cause when known, else libxl's
    first error without its source location."""
    known = cause(output, memory_mb=memory_mb)
    if known is not None:
        return known
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [_LOCATION.sub("", ln) for ln in lines if ln.startswith("libxl: error:")]
    if errors:
        return errors[0]
    others = [ln for ln in lines if not ln.startswith("Parsing config from")]
    return others[-1] if others else "no output"


# What xl restore says of a checkpoint file it cannot use: gone, not a save file, cut short.
_UNREADABLE_STATE = re.compile(
    r"Can't open restore file|wrong magic number|Failed to read \d+ bytes|Restore failed"
)


def unreadable_state(output: str) -> bool:
    """Did `xl restore` fail because its checkpoint file is gone or damaged (not because of
    the domain's config or the host)?"""
    return _UNREADABLE_STATE.search(output) is not None
