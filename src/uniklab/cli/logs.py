"""uniklab logs: the guest's console, so far or as it comes (-f)."""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import TYPE_CHECKING

import click

from uniklab import signals
from uniklab.cli import common, complete

if TYPE_CHECKING:
    from uniklab.lab import Lab


@click.command()
@click.argument("name", shell_complete=complete.instances)
@click.option(
    "-n",
    "--tail",
    "lines",
    type=click.IntRange(min=0),
    default=None,
    help="Only the last N lines (-n 0 with -f: only what comes from now on).",
)
@click.option("-f", "--follow", is_flag=True, help="Then print what the guest writes, as it comes.")
@click.pass_context
def logs(ctx: click.Context, name: str, lines: int | None, follow: bool) -> None:
    """Print the console log of instance NAME.

    With -f, keep printing what the guest writes until the instance is gone (a line on
    stderr says so) or Ctrl-C; both exit 0.  The console has no timestamps (QEMU and
    xenconsoled log the guest's bytes as they come), so there is no --since: -n N starts
    from the last N lines, -n 0 from now.

    \b
    Examples:
      uniklab logs r1
      uniklab logs -n 20 r1      the last 20 lines
      uniklab logs -f r1         all so far, then what comes, until r1 is gone or Ctrl-C
      uniklab logs -f -n 0 r1    only what comes from now on
    """
    from uniklab.consoles import last_lines

    lab = common.lab(ctx)
    if not follow:
        sys.stdout.write(last_lines(lab.logs(name), lines))
        return
    try:
        with contextlib.closing(lab.follow(name, lines=lines)) as chunks:
            for chunk in chunks:
                sys.stdout.write(chunk)
                sys.stdout.flush()
    except KeyboardInterrupt as exc:
        if signals.signum_of(exc) != signal.SIGINT:
            raise  # SIGTERM, SIGHUP: the CLI's 128 + N
        return  # Ctrl-C: the reader is done, as with `tail -f`
    common.err.print(f"{name}: console ended ({_why(lab, name)})", markup=False)


def _why(lab: Lab, name: str) -> str:
    """What became of ``name`` once its console ended."""
    from uniklab.errors import NotFoundError

    try:
        view = lab.get(name)
    except NotFoundError:
        return "destroyed"
    reason = view.row.exit_reason
    return f"{view.state}: {reason}" if reason else view.state
