"""uniklab gc: remove what uniklab owns that no state row explains."""

from __future__ import annotations

import click

from uniklab import gc as gc_mod
from uniklab.cli import common
from uniklab.errors import UniklabError


@click.command()
@click.option("-n", "--dry-run", is_flag=True, help="Only list what would be removed.")
@common.json_option
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Find leftovers (processes, runtime dirs, taps, bridges, half-baked images, and
    domains on Xen hosts) and remove them.  A host that does not answer is reported and
    the rest swept all the same (the exit status is then non-zero)."""
    lab = common.lab(ctx)
    sweep = gc_mod.find(lab)
    failed = {} if dry_run else gc_mod.remove(lab, sweep.items)
    problems = [*sweep.problems, *failed.values()]
    if as_json:
        common.print_json([i.as_dict() for i in sweep.items])
    else:
        verb = "would remove" if dry_run else "removed"
        for i in sweep.items:
            if i not in failed:
                where = "" if i.host == "local" else f" on {i.host}"
                common.out.print(f"{verb} {i.kind} {i.name}{where}: {i.detail}", markup=False)
        if not sweep.items:
            common.out.print("nothing to collect")
    if len(problems) == 1:
        raise UniklabError(problems[0])
    for line in problems:
        common.err.print(f"error: {line}", markup=False)
    if problems:
        raise UniklabError(f"gc incomplete: {len(problems)} problems")
