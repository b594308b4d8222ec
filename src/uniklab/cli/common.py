"""Shared pieces of the CLI: the Lab for this invocation, tables, JSON, sizes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from uniklab.bake.image import Manifest
from uniklab.lab import Lab

# Pipes get full-width lines (a table is data there), terminals their own width.
_WIDTH = None if sys.stdout.isatty() else 400
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(
    stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 400
)


def lab(ctx: click.Context) -> Lab:
    obj = ctx.ensure_object(dict)
    if "lab" not in obj:
        obj["lab"] = Lab()
        ctx.call_on_close(obj["lab"].close)
    return obj["lab"]  # type: ignore[no-any-return]


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=True)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    out.print(t)


def image_parts(m: Manifest) -> str:
    """'kernel 5.1MB + initramfs 3.3MB', 'unikernel 4.2MB + data disk 436.0KB'."""
    return " + ".join(f"{what} {human_size(n)}" for what, n in m.parts())


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"
