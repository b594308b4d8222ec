"""Shared pieces of the CLI: the Lab for this invocation, tables, JSON, sizes.

Kept cheap to import (every verb imports it, and so does a completion request): rich and
the Lab are loaded when first used.
"""

from __future__ import annotations

import json
import os
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


def _stream(name: str) -> Console:
    """``out`` or ``err``, made if not yet (inside this module, where the module-level
    ``__getattr__`` does not apply)."""
    return globals()[name] if name in globals() else __getattr__(name)  # type: ignore[no-any-return]


def _stdout() -> Console:
    return _stream("out")


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

    def shown_default(self) -> object:
        """The default the help shows (what the verb makes of ``None``)."""
        return self._fill().get("default", self.default)

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


PIPE_WIDTH = 400  # a pipe's line width (_console's): past it rich shrinks the columns
# Set, these make rich style a pipe as a terminal (its Console's is_terminal).
_STYLE_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns left-aligned, two spaces apart, a bold header on a terminal (like `xl list`);
    cells are text, never markup.

    Into a pipe the lines are written as rich's Table would write them (its rendering costs
    tens of milliseconds per hundred rows, and its import as much again: `uniklab ps | grep`
    pays neither).  rich renders the rest: terminals (it decides the styling and the width)
    and cells whose width is not their length (non-ASCII, control characters)."""
    cells = [list(columns), *(["" if v is None else str(v) for v in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    plain = (
        "out" not in globals()  # a console already made (a test's) decides for itself
        and not _isatty(sys.stdout)
        and not any(k in os.environ for k in _STYLE_ENV)
        and sum(widths) + 2 * (len(widths) - 1) <= PIPE_WIDTH
        and all(c.isascii() and c.isprintable() for r in cells for c in r)
    )
    if plain:
        sys.stdout.write("".join("  ".join(map(str.ljust, r, widths)) + "\n" for r in cells))
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=True)
    for r in cells[1:]:
        t.add_row(*map(Text, r))
    _stdout().print(t)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no such method; a closed file
        return False


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


def each(
    names: Sequence[str],
    verb: str,
    do: Callable[[str], object],
    done: Callable[[str], str] = lambda name: name,
) -> None:
    """Do ``verb`` to each instance, printing ``done(name)`` as each is done (as docker
    does).  With several names a failure is printed and the others go on; the exit is
    non-zero."""
    from uniklab.errors import UniklabError

    failed = 0
    for name in names:
        try:
            do(name)
            _stream("out").print(done(name), markup=False, highlight=False)
        except UniklabError as exc:
            if len(names) == 1:
                raise
            failed += 1
            _stream("err").print(f"error: {exc}", markup=False)
    if failed:
        raise UniklabError(f"{failed} of {len(names)} could not {verb}")
