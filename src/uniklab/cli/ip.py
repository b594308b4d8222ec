"""uniklab ip: where to reach an instance, and how that was found."""

from __future__ import annotations

import click

from uniklab.cli import common, complete


@click.command()
@click.argument("name", shell_complete=complete.instances)
@common.json_option
@click.pass_context
def ip(ctx: click.Context, name: str, as_json: bool) -> None:
    """Print the address of instance NAME.

    \b
    Examples:
      uniklab ip r1              where to reach r1, and how that was found
      uniklab ip --json r1       address, how it was found, published ports
    """
    info = common.lab(ctx).ip(name)
    if as_json:
        common.print_json(
            {
                "address": info.host,
                "source": info.source,
                "guest_address": info.guest_address,
                "ports": [{"host": h, "guest": g} for h, g in info.ports],
            }
        )
        return
    ports = " ".join(f"{info.host}:{h}->{g}" for h, g in info.ports)
    guest = f" guest {info.guest_address}" if info.guest_address else ""
    common.out.print(f"{info.host} ({info.source}){guest} {ports}".rstrip())
