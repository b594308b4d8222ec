"""uniklab recipes: the built-in catalog, with what each needs and what it exposes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from uniklab.cli import common

if TYPE_CHECKING:
    from uniklab.bake.recipe import Recipe


def _probe(r: Recipe) -> str:
    from uniklab.guest import console

    p = r.probe
    if p.kind == "http":
        return f"http GET {p.path} -> {p.status} :{r.probe_port}"
    if p.kind == "console":
        return f"console /{p.marker or console.EXEC}/"
    return f"{p.kind} :{r.probe_port}"


def _installed(r: Recipe) -> str:
    if r.build is not None:
        return "built from source"
    return "yes" if r.installed() else f"no ({r.binary})"


@click.command()
@common.json_option
def recipes(as_json: bool) -> None:
    """List the built-in recipes: the Debian package each needs, its ports and probe."""
    from uniklab.bake import recipe as recipes_mod

    found = [recipes_mod.load(n)[0] for n in recipes_mod.builtin_names()]
    if as_json:
        common.print_json(
            [{**r.model_dump(mode="json"), "installed": r.installed()} for r in found]
        )
        return
    common.table(
        ["NAME", "PACKAGE", "INSTALLED", "PORTS", "PROBE", "MEMORY", "MIN", "DESCRIPTION"],
        [
            (
                r.name,
                f"src:{r.build.debian_source}" if r.build else r.package or "",
                _installed(r),
                ",".join(map(str, r.ports)),
                _probe(r),
                r.memory,
                r.min_memory or "",
                r.description,
            )
            for r in found
        ],
    )
