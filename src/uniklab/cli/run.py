"""uniklab run: start an instance of an image (baking a built-in recipe if needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from uniklab.cli import common, complete
from uniklab.errors import UsageError

if TYPE_CHECKING:
    from uniklab.lab import InstanceView


def _default_wait() -> dict[str, object]:
    from uniklab.options import DEFAULT_WAIT

    return {"default": DEFAULT_WAIT}


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("image", shell_complete=complete.runnable)
@click.argument("args", nargs=-1)
@click.option("--name", help="Instance name (default: IMAGE-<random>).")
@click.option(
    "-m",
    "--memory",
    show_default=True,  # a configured default (uniklab config show)
    help="Guest memory, e.g. 64M, 128M, 1G (unset: the image's).",
)
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
    help="Attach a NIC to a managed network (repeatable); default: user-mode; "
    "'none': no NIC (reach the guest over channels).",
    shell_complete=complete.networks,
)
@click.option(
    "--channel",
    "channel_ports",
    multiple=True,
    metavar="PORT",
    help="A channel to guest port PORT: a UNIX socket on the host, no NIC needed "
    "(repeatable; with --net none: the image's ports).",
)
@click.option(
    "--link",
    "links",
    multiple=True,
    metavar="OTHER:PORT[:LOCAL]",
    help="127.0.0.1:LOCAL (default PORT) in the guest reaches PORT of instance OTHER over "
    "channels (OTHER has --channel PORT; repeatable).",
)
@click.option(
    "--host",
    "host",
    default="local",
    show_default=True,
    help="Inventory host to run on, 'auto' (the one with most free memory, under its "
    "instance limit) or a pool a,b (the same, among those).",
    shell_complete=complete.run_hosts,
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
@click.option(
    "--template",
    "clone",
    is_flag=True,
    help="Start a clone of this image and options' template (made first if missing: "
    "one boot): ready without booting.  See 'uniklab template'.",
)
@click.option("--wait/--no-wait", default=False, help="Wait until the image's probe passes.")
@click.option(
    "--timeout",
    cls=common.FilledLater,
    fill=_default_wait,
    type=float,
    default=None,  # RunOptions': DEFAULT_WAIT
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
    channel_ports: tuple[str, ...],
    links: tuple[str, ...],
    host: str,
    mac: str | None,
    ip_addr: str | None,
    gateway: str | None,
    restart: str,
    disks: tuple[str, ...],
    clone: bool,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run IMAGE; ARGS after '--' are appended to the app's command line.

    IMAGE is NAME[:TAG] (a built-in recipe is baked on first use) or a rumprun unikernel
    file (./redis.bin).  A Xen host without --net puts the guest on its bridge xenbr0.

    \b
    Examples:
      uniklab run redis --name r1 -p 6379:6379 --wait
      uniklab run redis --memory 64M -- --maxmemory 32mb
      uniklab run redis --net lab --ip 10.77.0.20/24 --gateway 10.77.0.1
      uniklab run redis --host xd3 --net xenbr0 --wait
      uniklab run redis --name m --net none --wait         (channel to 6379)
      uniklab run redis --net none --link m:6379:16379 -- --replicaof 127.0.0.1 16379
      uniklab run redis-static --template
    """
    from rich.markup import escape

    from uniklab import validate
    from uniklab.net.attach import NicRequest, parse_net_option
    from uniklab.options import NO_NET, RunOptions

    requests = [parse_net_option(n) for n in nets if n != NO_NET]
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
        net=[*(n for n in nets if n == NO_NET), *requests],
        channels=[validate.port(p, "channel port") for p in channel_ports],
        links=list(links),
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
        clone=clone,
    )
    lab = common.lab(ctx)
    status = f"starting {escape(validate.short(image, 200))}" + (
        " and waiting for it to be ready" if wait else ""
    )
    with common.err.status(status):
        view = lab.run(image, opts)
    _warn_if_tcg(view)
    if as_json:
        common.print_json(view.as_dict())
        return
    common.out.print(
        f"{view.name} running on {view.row.host} ({view.row.memory_mb}M, {view.row.vcpus} vCPU) "
        f"at {view.address or 'no address'}" + (" (a clone)" if view.clone_of else "")
    )


def _warn_if_tcg(view: InstanceView, kvm: Path = Path("/dev/kvm")) -> None:
    """One line when this machine has /dev/kvm but the guest runs under TCG (slower):
    KVM was expected, and the backend's probe found it does not run guests here."""
    if view.row.backend != "qemu" or view.row.host != "local":
        return
    if view.row.runtime.get("accel") != "tcg" or not kvm.exists():
        return
    if os.environ.get("UNIKLAB_ACCEL") == "tcg":  # asked for
        return
    common.err.print(
        f"warning: {view.name} runs under TCG (slow): /dev/kvm is here but KVM does not run "
        "guests on this machine; 'uniklab doctor' says why (UNIKLAB_ACCEL=tcg silences this)",
        markup=False,
    )
