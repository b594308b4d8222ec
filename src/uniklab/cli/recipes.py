"""uniklab recipes: the built-in catalog."""

from __future__ import annotations

import click

from uniklab.bake import recipe as recipes_mod
from uniklab.cli import common


@click.command()
@common.json_option
def recipes(as_json: bool) -> None:
    """List the built-in recipes."""
    found = [recipes_mod.load(n)[0] for n in recipes_mod.builtin_names()]
    if as_json:
        common.print_json([r.model_dump(mode="json") for r in found])
        return
    common.table(
        ["NAME", "BINARY", "PACKAGE", "PORTS", "PROBE", "MEMORY", "DESCRIPTION"],
        [
            (
                r.name,
                r.binary,
                r.package or "",
                ",".join(map(str, r.ports)),
                r.probe.kind,
                r.memory,
                r.description,
            )
            for r in found
        ],
    )
