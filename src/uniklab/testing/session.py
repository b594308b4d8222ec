"""Ownership of test instances: session labels, the reaper, and "can a backend run here?".

Every instance a test session (the pytest plugin, ``uniklab test``) starts is labelled with
the session id and its owner process (pid and start time, so a reused pid is not taken for
the owner).  ``reap`` removes instances whose owner is gone: leftovers of a crashed or
killed session.  Instances labelled ``uniklab.keep`` (kept for debugging) are left alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from uniklab.backends import registry
from uniklab.bake.kernel_choice import host_kernel
from uniklab.errors import NotFoundError, UniklabError

if TYPE_CHECKING:
    from uniklab.lab import Lab

log = logging.getLogger(__name__)

SESSION = "uniklab.session"
PID = "uniklab.pid"
PIDSTART = "uniklab.pidstart"
KEEP = "uniklab.keep"


def proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: fields after the last ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19]  # field 22, starttime


def owner_labels(session_id: str) -> dict[str, str]:
    pid = os.getpid()
    return {SESSION: session_id, PID: str(pid), PIDSTART: proc_start(pid) or ""}


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the process that labelled an instance still runs (the same process)."""
    try:
        pid = int(labels[PID])
    except (KeyError, ValueError):
        return True  # not ours to judge
    start = proc_start(pid)
    if start is None:
        return False
    want = labels.get(PIDSTART)
    return not want or want == start


def reap(lab: Lab) -> list[str]:
    """Destroy instances whose owning session is gone; return their names."""
    reaped = []
    for view in lab.ps():
        labels = view.row.labels
        if PID not in labels or labels.get(KEEP) or owner_alive(labels):
            continue
        log.info(
            "reaping %s, left by session %s (pid %s)", view.name, labels.get(SESSION), labels[PID]
        )
        try:
            lab.destroy(view.name)
        except NotFoundError:
            continue  # another reaper (an xdist worker) was first
        except UniklabError as exc:
            log.warning("could not reap %s: %s", view.name, exc)
            continue
        reaped.append(view.name)
    return reaped


def image_for_tests(lab: Lab, ref: str, backend: str = "qemu") -> str:
    """The image ref a test face (the pytest plugin, ``uniklab test``) runs for ``ref``.

    A recipe, that is a recipe file (``*.toml``) or a built-in recipe's name without a tag,
    is baked under a tag of its own (``Lab.bake_for_tests``; for the QEMU backend with the
    fast kernel when this machine has it): a test never repoints a user's tag.  An image
    ref with a tag (``redis:latest``) is exactly that image, never baked nor retagged; a
    bare name that is no recipe means ``NAME:latest``.
    """
    if is_recipe(ref):
        return lab.bake_for_tests(ref, fast=backend == "qemu").ref
    return lab.image(ref).ref


def is_recipe(ref: str) -> bool:
    """Whether a test face bakes ``ref`` (a recipe file, a built-in recipe's bare name)."""
    from uniklab.bake import recipe

    return ref.endswith(".toml") or (":" not in ref and ref in recipe.builtin_names())


def fast_hint(backend: str = "qemu") -> str | None:
    """The one line a test face says once when its images will boot the slow kernel."""
    from uniklab.bake import kernel_choice

    if backend != "qemu" or kernel_choice.fast_default() is not None:
        return None
    return kernel_choice.FAST_HINT


def test_backends() -> list[str]:
    """The backends a test session can start guests on: here, with published ports."""
    return [n for n in registry.names() if registry.get(n).user_networking]


def backend_unavailable(backend: str = "qemu") -> str | None:
    """Why no guest can run here (None: one can): no hypervisor binary, no readable kernel."""
    if backend not in test_backends():
        return f"unknown uniklab backend {backend!r} (available: {', '.join(test_backends())})"
    why = registry.get(backend).unavailable()
    if why:
        return why
    try:
        host_kernel()
    except UniklabError as exc:
        return str(exc)
    return None
