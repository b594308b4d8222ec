"""uniklab run: start an instance of an image (baking a built-in recipe if needed)."""

from __future__ import annotations

import click
from rich.markup import escape

from uniklab import validate
from uniklab.cli import common
from uniklab.errors import UsageError
from uniklab.lab import DEFAULT_WAIT, RunOptions
from uniklab.net.attach import NicRequest, parse_net_option


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("args", nargs=-1)
@click.option("--name", help="Instance name (default: IMAGE-<random>).")
@click.option("-m", "--memory", help="Guest memory, e.g. 64M, 128M, 1G (default: the image's).")
@click.option("--vcpus", type=int, default=1, show_default=True, help="Virtual CPUs.")
@click.option(
    "-p",
    "--publish",
    "publish",
    multiple=True,
    metavar="HOST:GUEST",
    help="Forward 127.0.0.1:HOST to the guest's port GUEST (repeatable).",
)
@click.option(
    "-e",
    "--env",
    "env",
    multiple=True,
    metavar="NAME=VALUE",
    help="Environment variable for the app (repeatable).",
)
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label.")
@click.option(
    "--net",
    "nets",
    multiple=True,
    metavar="NET[,mac=M][,ip=CIDR][,gw=IP]",
    help="Attach a NIC to a managed network (repeatable); default: user-mode.",
)
@click.option(
    "--host",
    "host",
    default="local",
    show_default=True,
    help="Inventory host to run on (a Xen dom0), or 'auto': most free memory.",
)
@click.option("--mac", help="MAC of the first --net NIC.")
@click.option("--ip", "ip_addr", metavar="CIDR", help="Static address of the first --net NIC.")
@click.option("--gateway", help="Gateway for --ip.")
@click.option(
    "--restart",
    type=click.Choice(["no", "on-failure"]),
    default="no",
    show_default=True,
    help="on-failure: relaunch a crashed guest (checked by every uniklab command).",
)
@click.option(
    "--disk",
    "disks",
    multiple=True,
    metavar="FILE[:MOUNT]",
    help="A writable block device, mounted at MOUNT (rumprun images: rumprun's -b).",
)
@click.option("--wait/--no-wait", default=False, help="Wait until the image's probe passes.")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_WAIT,
    show_default=True,
    help="Seconds to wait for readiness.",
)
@common.json_option
@click.pass_context
def run(
    ctx: click.Context,
    image: str,
    args: tuple[str, ...],
    name: str | None,
    memory: str | None,
    vcpus: int,
    publish: tuple[str, ...],
    env: tuple[str, ...],
    labels: tuple[str, ...],
    nets: tuple[str, ...],
    host: str,
    mac: str | None,
    ip_addr: str | None,
    gateway: str | None,
    restart: str,
    disks: tuple[str, ...],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Run IMAGE; ARGS after '--' are appended to the app's command line."""
    requests = [parse_net_option(n) for n in nets]
    if (mac or ip_addr or gateway) and not requests:
        raise UsageError("--mac, --ip and --gateway go with --net")
    if requests:
        first = requests[0]
        requests[0] = NicRequest(
            first.network, mac or first.mac, ip_addr or first.ip, gateway or first.gateway
        )
    opts = RunOptions(
        restart=restart,
        host=host,
        net=requests,
        name=name,
        memory=memory,
        vcpus=vcpus,
        publish=[validate.publish(p) for p in publish],
        env=dict(validate.env_pair(e) for e in env),
        args=list(args),
        labels=dict(validate.label_pair(label) for label in labels),
        wait=wait,
        timeout=timeout,
        disks=list(disks),
    )
    lab = common.lab(ctx)
    status = f"starting {escape(validate.short(image, 200))}" + (
        " and waiting for it to be ready" if wait else ""
    )
    with common.err.status(status):
        view = lab.run(image, opts)
    if as_json:
        common.print_json(view.as_dict())
        return
    common.out.print(
        f"{view.name} running ({view.row.memory_mb}M, {view.row.vcpus} vCPU) "
        f"at {view.address or 'no address'}"
    )
