"""Shared pieces of the CLI: the Lab for this invocation, tables, JSON, sizes.

Kept cheap to import (every verb imports it, and so does a completion request): rich and
the Lab are loaded when first used.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from uniklab.bake.image import Manifest
    from uniklab.lab import Lab

    out: Console  # standard output: tables, results
    err: Console  # standard error: status spinners, error lines


def _console(stderr: bool) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Pipes get full-width lines (a table is data there), terminals their own width.
    width = None if stream.isatty() else 400
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def __getattr__(name: str) -> Any:
    # ``common.out`` and ``common.err`` are made on first use: rich costs tens of
    # milliseconds to import, and --help, completion and JSON output never need it.
    if name in ("out", "err"):
        console = _console(stderr=name == "err")
        globals()[name] = console
        return console
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stdout() -> Console:
    return globals()["out"] if "out" in globals() else __getattr__("out")  # type: ignore[no-any-return]


def lab(ctx: click.Context) -> Lab:
    obj = ctx.ensure_object(dict)
    if "lab" not in obj:
        from uniklab.lab import Lab

        obj["lab"] = Lab()
        ctx.call_on_close(obj["lab"].close)
    return obj["lab"]  # type: ignore[no-any-return]


class FilledLater(click.Option):
    """An option whose shown default or help come from a module imported only when the
    help is shown: completing or running the verb does not pay for that module.

    ``fill`` returns the attributes to show (``{"default": DEFAULT_WAIT}``), set while
    the help is made: such a default is shown only (the verb's own code applies it to
    ``None``)."""

    def __init__(self, *args: Any, fill: Callable[[], dict[str, object]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fill = fill

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        filled = self._fill()
        saved = {attr: getattr(self, attr) for attr in filled}
        try:
            for attr, value in filled.items():
                setattr(self, attr, value)
            return super().get_help_record(ctx)
        finally:
            for attr, value in saved.items():
                setattr(self, attr, value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=True)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    _stdout().print(t)


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
