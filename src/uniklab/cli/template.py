"""uniklab template: list, make and remove templates (guests saved ready, that
``run --template`` clones instead of booting)."""

from __future__ import annotations

import datetime as dt

import click

from uniklab.cli import common, complete
from uniklab.errors import UsageError


@click.group()
def template() -> None:
    """Templates: guests saved ready, that `run --template` clones instead of booting.

    A template is made from an image and the run options that shape the guest (memory,
    vCPUs, args, env, guest ports): the first `run --template` with them makes it (one
    boot), later ones restore it.  `gc` removes templates of removed images, `rmi` those
    of the image it removes.
    """


@template.command("ls")
@common.json_option
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List templates: KEY IMAGE MEM VCPUS ARGS SIZE BUILT CREATED."""
    from uniklab import templates

    found = templates.ls(common.lab(ctx).paths)
    if as_json:
        common.print_json([t.as_dict() for t in found])
        return
    common.table(
        ["KEY", "IMAGE", "MEM", "VCPUS", "ARGS", "SIZE", "BUILT(s)", "CREATED"],
        [
            (
                t.key[:12],
                t.image,
                f"{t.meta.get('memory_mb')}M",
                t.meta.get("vcpus"),
                " ".join(t.meta.get("args") or []),
                common.human_size(t.size_bytes),
                t.meta.get("build_seconds"),
                dt.datetime.fromtimestamp(float(t.meta.get("created", 0))).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
            )
            for t in found
        ],
    )


@template.command("create")
@click.argument("image", shell_complete=complete.runnable)
@click.argument("args", nargs=-1)
@click.option("-m", "--memory", help="Guest memory, e.g. 64M (unset: the image's).")
@click.option("--vcpus", type=int, default=1, show_default=True, help="Virtual CPUs.")
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE", help="App env.")
@click.option(
    "--port",
    "ports",
    multiple=True,
    type=int,
    metavar="GUEST",
    help="A guest port (default: the image's).",
)
@click.option(
    "--timeout", type=float, default=120.0, show_default=True, help="Seconds to be ready."
)
@common.json_option
@click.pass_context
def create(
    ctx: click.Context,
    image: str,
    args: tuple[str, ...],
    memory: str | None,
    vcpus: int,
    env: tuple[str, ...],
    ports: tuple[int, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Make the template that `run IMAGE --template` with these options clones (now, not
    at the first clone); nothing is done if it exists and is whole.

    \b
    Examples:
      uniklab template create redis-static
      uniklab template create redis-static -m 64M -- --maxmemory 32mb
    """
    from uniklab import templates, validate
    from uniklab.options import RunOptions

    opts = RunOptions(
        memory=memory,
        vcpus=vcpus,
        env=dict(validate.env_pair(e) for e in env),
        args=list(args),
        publish=[(0, p) for p in ports],
        timeout=timeout,
        clone=True,
    )
    with common.err.status(f"making the template of {validate.short(image, 200)}"):
        t, built = templates.create_for(common.lab(ctx), image, opts)
    if as_json:
        common.print_json({**t.as_dict(), "built": built})
        return
    said = f"built in {t.meta.get('build_seconds')} s" if built else "already there"
    common.out.print(f"template {t.key[:12]} of {t.image}: {said}", markup=False)


@template.command("rm")
@click.argument("keys", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Remove every template.")
@click.pass_context
def rm(ctx: click.Context, keys: tuple[str, ...], every: bool) -> None:
    """Remove templates by KEY (a prefix of at least 4 hex digits, as `template ls` shows
    it).  Running clones keep working (they hold what they mapped)."""
    from uniklab import templates

    if bool(keys) == every:
        raise UsageError("give template KEYs or --all (not both)")
    lab = common.lab(ctx)
    paths = lab.paths
    chosen = templates.ls(paths) if every else [templates.find(paths, k) for k in keys]
    for t in chosen:
        templates.remove(lab, t.key)
        common.out.print(f"removed template {t.key[:12]} of {t.image}", markup=False)
