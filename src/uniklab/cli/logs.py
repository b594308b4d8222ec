"""uniklab logs: the guest's console."""

from __future__ import annotations

import sys

import click

from uniklab.cli import common, complete


@click.command()
@click.argument("name", shell_complete=complete.instances)
@click.option("-n", "--tail", "lines", type=int, default=0, help="Only the last N lines.")
@click.pass_context
def logs(ctx: click.Context, name: str, lines: int) -> None:
    """Print the console log of instance NAME.

    \b
    Examples:
      uniklab logs r1
      uniklab logs -n 20 r1      the last 20 lines
    """
    from uniklab.lab import tail

    text = common.lab(ctx).logs(name)
    sys.stdout.write((tail(text, lines) + "\n") if lines else text)
