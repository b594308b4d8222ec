"""uniklab kernel: build (once per machine) and list the specialised guest kernels."""

from __future__ import annotations

import time
from typing import TypedDict

import click

from uniklab.cli import common, progress
from uniklab.kernel import build as kbuild
from uniklab.kernel import config as kconfig


@click.group()
def kernel() -> None:
    """Specialised guest kernels (tinyconfig + uniklab's fragments, everything built in)."""


@kernel.command("build")
@click.option(
    "--profile",
    type=click.Choice(sorted(kconfig.PROFILES)),
    default=kconfig.DEFAULT_PROFILE,
    show_default=True,
    help="Which fragments: microvm (QEMU microvm), xen (also a Xen PV guest).",
)
@click.option("-j", "--jobs", type=int, help="make -j (default: the number of CPUs).")
@common.json_option
def build(profile: str, jobs: int | None, as_json: bool) -> None:
    """Build the kernel of PROFILE from Debian's linux-source-6.1 (minutes, once per machine)."""
    start = time.monotonic()
    with progress.shown(f"kernel {profile}") as say:
        entry = kbuild.build(profile, jobs=jobs, progress=say)
    seconds = time.monotonic() - start
    doc = _describe(entry)
    if as_json:
        common.print_json({**doc, "seconds": round(seconds, 1)})
        return
    common.out.print(
        f"kernel {profile} {entry.key} ({entry.release}): {common.human_size(doc['size'])} "
        f"in {seconds:.1f}s\n{entry.bzimage}",
        markup=False,
    )


@kernel.command("ls")
@common.json_option
def ls(as_json: bool) -> None:
    """The profiles and whether this machine has built them."""
    rows: list[_Row] = []
    for profile in sorted(kconfig.PROFILES):
        entry = kbuild.cached(profile)
        rows.append(
            _describe(entry)
            if entry
            else {"profile": profile, "key": "", "release": "", "size": 0, "path": ""}
        )
    if as_json:
        common.print_json(rows)
        return
    common.table(
        ["PROFILE", "KEY", "RELEASE", "SIZE", "PATH"],
        [
            [
                r["profile"],
                r["key"] or "-",
                r["release"] or "(not built)",
                common.human_size(r["size"]) if r["size"] else "-",
                r["path"] or "-",
            ]
            for r in rows
        ],
    )


class _Row(TypedDict):
    profile: str
    key: str
    release: str
    size: int
    path: str


def _describe(entry: kbuild.BuiltKernel) -> _Row:
    return {
        "profile": entry.profile,
        "key": entry.key,
        "release": entry.release,
        "size": entry.bzimage.stat().st_size,
        "path": str(entry.bzimage),
    }
