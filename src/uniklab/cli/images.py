"""uniklab images: list baked images."""

from __future__ import annotations

import datetime as dt

import click

from uniklab.cli import common


@click.command()
@common.json_option
@click.pass_context
def images(ctx: click.Context, as_json: bool) -> None:
    """List baked images."""
    found = common.lab(ctx).list_images()
    if as_json:
        common.print_json([m.model_dump(mode="json") for m in found])
        return
    common.table(
        ["NAME", "TAG", "DIGEST", "KIND", "SIZE", "CREATED"],
        [
            (
                m.name,
                m.tag,
                m.short_digest,
                m.kind,
                common.human_size(m.size),
                dt.datetime.fromtimestamp(m.created).strftime("%Y-%m-%d %H:%M:%S"),
            )
            for m in found
        ],
    )
