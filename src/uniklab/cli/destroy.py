"""uniklab destroy: stop instances and remove everything they had."""

from __future__ import annotations

import click

from uniklab.cli import common, complete


@click.command()
@click.argument("names", nargs=-1, shell_complete=complete.instances)
@click.option("-a", "--all", "everything", is_flag=True, help="Destroy every instance.")
@click.pass_context
def destroy(ctx: click.Context, names: tuple[str, ...], everything: bool) -> None:
    """Destroy instances (like `xl destroy`): process, runtime files and state row.

    \b
    Examples:
      uniklab destroy r1 r2
      uniklab destroy --all
      uniklab destroy $(uniklab ps -q --filter label=session=ci)
    """
    lab = common.lab(ctx)
    if everything:
        names = tuple(v.name for v in lab.ps())
    elif not names:
        raise click.UsageError("name an instance, or use --all")
    common.each(names, "be destroyed", lab.destroy, lambda name: f"destroyed {name}")
