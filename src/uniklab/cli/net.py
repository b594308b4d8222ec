"""uniklab net: managed networks (bridge + DHCP, optionally in a namespace)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from uniklab.cli import common, complete

if TYPE_CHECKING:
    from uniklab.lab import Lab


def _lease_help() -> dict[str, object]:
    from uniklab.net.dnsmasq import LEASE_TIME

    return {
        "help": f"DHCP lease time (default {LEASE_TIME}; at least 2m, or infinite), e.g. 2m, "
        "12h. Guests renew at half of it."
    }


@click.group()
def net() -> None:
    """Create, list and remove bridged networks."""


_libvirt_option = click.option(
    "--libvirt",
    "libvirt_host",
    metavar="HOST",
    shell_complete=complete.hosts,
    help="On libvirt host HOST: a libvirt network there (its bridge, libvirt's DHCP).",
)


@net.command("create")
@click.argument("name")
@click.option("--subnet", help="IPv4 subnet, e.g. 10.77.0.0/24 (needed to create a bridge).")
@click.option(
    "--bridge",
    help="Bridge name (default ukb<hash>-NAME); an existing bridge is "
    "used as it is, with no DHCP server of ours.",
)
@click.option("--netns", help="Put the bridge (and dnsmasq) in this network namespace.")
@click.option("--dhcp/--no-dhcp", default=True, show_default=True, help="Serve DHCP.")
@click.option("--lease-time", cls=common.FilledLater, fill=_lease_help)
@_libvirt_option
@common.json_option
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    subnet: str | None,
    bridge: str | None,
    netns: str | None,
    dhcp: bool,
    lease_time: str | None,
    libvirt_host: str | None,
    as_json: bool,
) -> None:
    """Create network NAME.

    \b
    Examples:
      uniklab net create lab --subnet 10.77.0.0/24
      uniklab net create lab --subnet 10.77.0.0/24 --netns uklab --lease-time 12h
      uniklab net create lan --bridge xenbr0 --no-dhcp     an existing bridge, as it is
      uniklab net create lvnet --libvirt kvm1 --subnet 10.78.0.0/24
      uniklab run redis --host kvm1 --net lvnet      (or a libvirt network of its own: default)
    """
    from uniklab.net.dnsmasq import LEASE_TIME
    from uniklab.net.service import NetworkSpec

    lab = common.lab(ctx)
    if libvirt_host is not None:
        _create_on_libvirt(lab, name, libvirt_host, subnet, (bridge, netns, lease_time), as_json)
        return
    lab.reconcile()
    row = lab.networks.create(NetworkSpec(name, subnet, bridge, netns, dhcp, lease_time))
    if as_json:
        common.print_json(row.__dict__)
        return
    where = f" in namespace {row.netns}" if row.netns else ""
    leases = lease_time or LEASE_TIME
    dhcp_text = f"DHCP by uniklab ({leases} leases)" if row.dhcp else "no DHCP of ours"
    common.out.print(
        f"network {row.name}: bridge {row.bridge}{where}, "
        f"{row.subnet or 'subnet unknown'}, {dhcp_text}"
    )


def _create_on_libvirt(
    lab: Lab,
    name: str,
    host: str,
    subnet: str | None,
    local_only: tuple[str | None, ...],
    as_json: bool,
) -> None:
    from uniklab.errors import UsageError
    from uniklab.net import libvirt_net

    if any(v is not None for v in local_only):
        raise UsageError("--bridge, --netns and --lease-time are for networks on this machine")
    bridge, net = libvirt_net.create(lab, name, host, subnet)
    if as_json:
        common.print_json({"name": name, "host": host, "bridge": bridge, "subnet": net})
        return
    common.out.print(
        f"network {name} on {host}: libvirt network, bridge {bridge}, {net}, DHCP by libvirt",
        markup=False,
    )


@net.command("ls")
@_libvirt_option
@common.json_option
@click.pass_context
def ls(ctx: click.Context, libvirt_host: str | None, as_json: bool) -> None:
    """List networks (of this machine, or of a libvirt host)."""
    lab = common.lab(ctx)
    if libvirt_host is not None:
        from uniklab.net import libvirt_net

        found = libvirt_net.ls(lab, libvirt_host)
        if as_json:
            common.print_json([n.__dict__ for n in found])
            return
        common.table(
            ["NAME", "BRIDGE", "OURS", "INSTANCES"],
            [
                (
                    n.name,
                    n.bridge,
                    "yes" if n.mine else "no",
                    ",".join(libvirt_net.users(lab, n.name, libvirt_host)),
                )
                for n in found
            ],
        )
        return
    lab.reconcile()
    rows = lab.networks.store.networks()
    users = lab.network_users()
    if as_json:
        common.print_json(
            [
                {**r.__dict__, "status": lab.networks.status(r), "instances": users.get(r.name, [])}
                for r in rows
            ]
        )
        return
    common.table(
        ["NAME", "BRIDGE", "NETNS", "SUBNET", "GATEWAY", "DHCP", "STATUS", "INSTANCES"],
        [
            (
                r.name,
                r.bridge,
                r.netns or "",
                r.subnet or "",
                r.gateway or "",
                "yes" if r.dhcp else "no",
                lab.networks.status(r),
                ",".join(users.get(r.name, [])),
            )
            for r in rows
        ],
    )


@net.command("rm")
@click.argument("names", nargs=-1, required=True, shell_complete=complete.networks)
@_libvirt_option
@click.pass_context
def rm(ctx: click.Context, names: tuple[str, ...], libvirt_host: str | None) -> None:
    """Remove networks (refused while instances use them)."""
    lab = common.lab(ctx)
    lab.reconcile()
    for name in names:
        if libvirt_host is not None:
            from uniklab.net import libvirt_net

            libvirt_net.remove(lab, name, libvirt_host)
        else:
            lab.networks.rm(name, lab.network_users().get(name, []))
        common.out.print(f"removed network {name}")
