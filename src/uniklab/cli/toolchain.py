"""uniklab toolchain: build (once per machine), list and remove the rumprun toolchains."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import TypedDict

import click

from uniklab.cli import common, progress
from uniklab.errors import NotFoundError
from uniklab.toolchain import rumprun as rr
from uniklab.toolchain import sources

_platform_option = click.option(
    "--platform",
    type=click.Choice(rr.PLATFORMS),
    default="hw",
    show_default=True,
    help="hw: bare metal and QEMU (hw_virtio); xen: Xen PV guests (xen_pv).",
)


@click.group()
def toolchain() -> None:
    """Toolchains built from pinned sources (rumprun), once per machine."""


@toolchain.command("build")
@click.argument("name", type=click.Choice(["rumprun"]))
@_platform_option
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    metavar="DIR|TARBALL",
    help=f"rumprun's sources: {sources.RUMPRUN.tarball}, a directory holding it, or an "
    f"unpacked tree (default: ${sources.ENV}, else a clone of the pinned commits).",
)
@click.option(
    "--fetch/--no-fetch",
    default=True,
    show_default=True,
    help="Without local sources, clone the pinned commits from upstream with git.",
)
@click.option("-j", "--jobs", type=int, help="make -j (default: the number of CPUs).")
@common.json_option
def build(
    name: str,
    platform: str,
    source: Path | None,
    fetch: bool,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Build the NAME toolchain for --platform from its pinned sources (minutes, niced;
    once per machine: later builds are instant)."""
    start = time.monotonic()
    label = f"{name} {platform}"
    with progress.shown(f"toolchain {label}") as say:
        entry = rr.build(platform, source=source, fetch=fetch, jobs=jobs, progress=say)
    seconds = time.monotonic() - start
    row = _describe(entry)
    if as_json:
        common.print_json({**row, "built_now": entry.built_now, "seconds": round(seconds, 1)})
        return
    how = "built" if entry.built_now else "cached"
    common.out.print(
        f"toolchain {label} {entry.key}: {how} in {seconds:.1f}s, "
        f"{common.human_size(row['size'])}\n{entry.prefix}",
        markup=False,
    )


@toolchain.command("ls")
@common.json_option
def ls(as_json: bool) -> None:
    """The toolchains this machine has built."""
    rows = [_describe(t) for t in rr.installed()]
    if as_json:
        common.print_json(rows)
        return
    common.table(
        ["TOOLCHAIN", "PLATFORM", "KEY", "SIZE", "BUILT", "PATH"],
        [
            [
                r["name"],
                r["platform"],
                r["key"],
                common.human_size(r["size"]),
                _local_time(r["built_at"]),
                r["path"],
            ]
            for r in rows
        ],
    )


@toolchain.command("rm")
@click.argument("name", type=click.Choice(["rumprun"]))
@click.option(
    "--platform", type=click.Choice(rr.PLATFORMS), help="Only this platform (default: all)."
)
@click.option("--key", help="Only the entry with this key (see 'uniklab toolchain ls').")
def rm(name: str, platform: str | None, key: str | None) -> None:
    """Remove built NAME toolchains (all of them, or those of --platform / --key)."""
    chosen = [
        t
        for t in rr.installed()
        if (platform is None or t.platform == platform) and (key is None or t.key == key)
    ]
    if not chosen:
        raise NotFoundError(
            f"no {name} toolchain built"
            + (f" for platform {platform}" if platform else "")
            + (f" with key {key}" if key else "")
        )
    for t in chosen:
        rr.remove(t)
        common.out.print(f"removed {t.name}", markup=False)


class _Row(TypedDict):
    name: str
    platform: str
    key: str
    size: int
    built_at: str
    build_seconds: float
    path: str


def _describe(entry: rr.Toolchain) -> _Row:
    meta = entry.meta()
    return {
        "name": "rumprun",
        "platform": entry.platform,
        "key": entry.key,
        "size": _tree_size(entry.dir),
        "built_at": str(meta.get("built_at", "")),
        "build_seconds": float(meta.get("seconds", 0.0)),
        "path": str(entry.prefix),
    }


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso or "-"
