"""uniklab bake: a recipe (built-in name or .toml file) becomes an image."""

from __future__ import annotations

import click

from uniklab.cli import common


@click.command()
@click.argument("recipe")
@click.option("-t", "--tag", default="latest", show_default=True, help="Image tag.")
@common.json_option
@click.pass_context
def bake(ctx: click.Context, recipe: str, tag: str, as_json: bool) -> None:
    """Bake RECIPE (a built-in name such as 'redis', or a recipe .toml) into an image."""
    lab = common.lab(ctx)
    with common.err.status(f"baking {recipe}") as status:
        result = lab.bake(recipe, tag=tag, progress=lambda msg: status.update(f"{recipe}: {msg}"))
    m = result.manifest
    if as_json:
        common.print_json(
            {
                **m.model_dump(mode="json"),
                "cached": result.cached,
                "seconds": round(result.seconds, 3),
            }
        )
        return
    how = "cached" if result.cached else "baked"
    common.out.print(
        f"{m.ref} {m.short_digest} {how} in {result.seconds:.2f}s: "
        f"kernel {common.human_size(m.kernel_size)} + initrd {common.human_size(m.initrd_size)}"
    )
