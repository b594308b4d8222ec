"""uniklab bake: a recipe (built-in name or .toml file), or a bare binary, becomes an image."""

from __future__ import annotations

import click

from uniklab.cli import common, progress
from uniklab.errors import UsageError


@click.command()
@click.argument("recipe", required=False)
@click.option("-t", "--tag", default="latest", show_default=True, help="Image tag.")
@click.option(
    "--binary",
    metavar="PATH",
    help="Bake this binary instead of a recipe (its libraries are found from its ELF headers).",
)
@click.option("--port", type=int, help="With --binary: the TCP port it serves (probed with tcp).")
@click.option(
    "--name", "image_name", help="With --binary: the image name (default: its file name)."
)
@click.option(
    "--arg", "args", multiple=True, metavar="ARG", help="With --binary: an argument (repeatable)."
)
@click.option("--memory", default="128M", show_default=True, help="With --binary: default memory.")
@click.option(
    "--kernel",
    default="host",
    show_default=True,
    metavar="host|specialised[:PROFILE]|PATH",
    help="The kernel: the host's (with its modules), uniklab's specialised build "
    "(built once per machine: minutes; see 'uniklab kernel build'), or a kernel file.",
)
@click.option(
    "--root",
    type=click.Choice(["initramfs", "erofs"]),
    show_default=True,  # a configured default (uniklab config show)
    help="The root filesystem: an initramfs (any kernel, QEMU and Xen), or a read-only "
    "erofs disk (QEMU; a kernel with erofs built in). Default: erofs when the kernel has it.",
)
@common.json_option
@click.pass_context
def bake(
    ctx: click.Context,
    recipe: str | None,
    tag: str,
    binary: str | None,
    port: int | None,
    image_name: str | None,
    args: tuple[str, ...],
    memory: str,
    kernel: str,
    root: str | None,
    as_json: bool,
) -> None:
    """Bake RECIPE (a built-in name such as 'redis', or a recipe .toml) into an image.

    Or bake a binary: uniklab bake --binary /usr/local/bin/myd --port 9000 --name myd

    \b
    Examples:
      uniklab bake redis
      uniklab bake redis-static --kernel specialised --root erofs -t small
      uniklab bake ./myapp.toml
    """
    from uniklab import validate
    from uniklab.bake import recipe as recipe_mod

    if binary is None:
        if recipe is None:
            raise UsageError("give a RECIPE (name or .toml file) or --binary PATH")
        if port is not None or image_name or args:
            raise UsageError("--port, --name and --arg go with --binary, not with a recipe")
    elif recipe is not None:
        raise UsageError("give a RECIPE or --binary, not both")
    lab = common.lab(ctx)
    what = recipe or binary or ""
    shown = validate.short(what, 200).strip("'")  # user input, bounded (shown as text)
    with progress.shown(f"baking {shown}") as say:
        if binary is None:
            result = lab.bake(what, tag=tag, kernel=kernel, root=root, progress=say)
        else:
            rec = recipe_mod.from_binary(
                binary, port=port, name=image_name, args=list(args), memory=memory
            )
            result = lab.bake_recipe(rec, tag=tag, kernel=kernel, root=root, progress=say)
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
        f"{m.ref} {m.short_digest} {how} in {result.seconds:.2f}s: {common.image_parts(m)}"
    )
