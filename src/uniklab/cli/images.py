"""uniklab images: list baked images; ``uniklab images import``: bring a rumprun unikernel
baked elsewhere (rumprun-bake's output) into the image store."""

from __future__ import annotations

import datetime as dt

import click

from uniklab import validate
from uniklab.cli import common
from uniklab.errors import UsageError


@click.group(invoke_without_command=True)
@common.json_option
@click.pass_context
def images(ctx: click.Context, as_json: bool) -> None:
    """List baked images (or import one: uniklab images import FILE)."""
    if ctx.invoked_subcommand is not None:
        return
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


@images.command("import")
@click.argument("file")
@click.option("--name", "image_name", help="The image name (default: the file's stem).")
@click.option("-t", "--tag", default="latest", show_default=True, help="Image tag.")
@click.option(
    "--platform",
    type=click.Choice(["auto", "qemu", "xen"]),
    default="auto",
    show_default=True,
    help="What the kernel is for: qemu (rumprun-bake hw_virtio, multiboot) or xen "
    "(xen_pv); auto reads it from the file.",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="PORT",
    help="A TCP port the app serves (repeatable); the first is probed for readiness "
    "(none: ready when rumprun calls the app's main()).",
)
@click.option("--arg", "args", multiple=True, metavar="ARG", help="An argument (repeatable).")
@click.option("--argv0", help="The program name the app is given (default: the file's stem).")
@click.option("--memory", default="64M", show_default=True, help="Default memory.")
@click.option(
    "--disk",
    "disks",
    multiple=True,
    metavar="FILE:/MOUNT",
    help="A data disk image rumprun mounts at /MOUNT (repeatable), e.g. data.iso:/data.",
)
@common.json_option
@click.pass_context
def import_(
    ctx: click.Context,
    file: str,
    image_name: str | None,
    tag: str,
    platform: str,
    ports: tuple[str, ...],
    args: tuple[str, ...],
    argv0: str | None,
    memory: str,
    disks: tuple[str, ...],
    as_json: bool,
) -> None:
    """Import FILE, a rumprun unikernel baked with rumprun-bake (hw_virtio or xen_pv).

    e.g. uniklab images import redis.bin --port 6379 --arg /data/conf/redis.conf
    --disk data.iso:/data
    """
    from rich.markup import escape

    port_numbers = [validate.port(p) for p in ports]
    disk_pairs = [_disk(d) for d in disks]
    lab = common.lab(ctx)
    shown = escape(validate.short(file, 200).strip("'"))
    with common.err.status(f"importing {shown}"):
        m = lab.import_image(
            file,
            name=image_name,
            tag=tag,
            platform=platform,
            args=list(args),
            ports=port_numbers,
            memory=memory,
            disks=disk_pairs,
            argv0=argv0,
        )
    if as_json:
        common.print_json(m.model_dump(mode="json"))
        return
    common.out.print(
        f"{m.ref} {m.short_digest} imported for {', '.join(m.platforms)}: {common.image_parts(m)}",
        markup=False,
    )


def _disk(spec: str) -> tuple[str, str]:
    """'FILE:/MOUNT' (split at the last ':', so a file name may hold one)."""
    file, sep, mount = spec.rpartition(":")
    if not sep or not file or not mount.startswith("/"):
        raise UsageError(
            f"invalid --disk {validate.short(spec)}: use FILE:/MOUNT, e.g. data.iso:/data"
        )
    return file, mount
