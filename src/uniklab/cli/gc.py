"""uniklab gc: remove what uniklab owns that no state row explains."""

from __future__ import annotations

import click

from uniklab import gc as gc_mod
from uniklab.cli import common


@click.command()
@click.option("-n", "--dry-run", is_flag=True, help="Only list what would be removed.")
@common.json_option
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Find leftovers (processes, runtime dirs, taps, bridges, half-baked images) and
    remove them."""
    items = gc_mod.find(common.lab(ctx))
    if not dry_run:
        gc_mod.remove(items)
    if as_json:
        common.print_json([i.__dict__ for i in items])
        return
    verb = "would remove" if dry_run else "removed"
    for i in items:
        common.out.print(f"{verb} {i.kind} {i.name}: {i.detail}", markup=False)
    if not items:
        common.out.print("nothing to collect")
