"""uniklab rmi: remove images."""

from __future__ import annotations

import click

from uniklab.cli import common, complete


@click.command()
@click.argument("refs", nargs=-1, required=True, shell_complete=complete.images)
@click.option("-f", "--force", is_flag=True, help="Remove even if instances use it.")
@click.pass_context
def rmi(ctx: click.Context, refs: tuple[str, ...], force: bool) -> None:
    """Remove one or more images.

    \b
    Examples:
      uniklab rmi redis:latest
      uniklab rmi -f redis       also when instances use it
    """
    for ref in refs:
        m = common.lab(ctx).rmi(ref, force=force)
        common.out.print(f"removed {m.ref} {m.short_digest}")
