"""uniklab channel: where an instance's channel to a guest port is on the host."""

from __future__ import annotations

import click

from uniklab.cli import common, complete


@click.command()
@click.argument("name", shell_complete=complete.instances)
@click.argument("port")
@click.pass_context
def channel(ctx: click.Context, name: str, port: str) -> None:
    """Print the host's UNIX socket of instance NAME's channel to guest port PORT.

    \b
    Examples:
      uniklab channel r1 6379                       the socket of r1's channel to 6379
      redis-cli -s "$(uniklab channel r1 6379)" ping
      socat - UNIX-CONNECT:"$(uniklab channel r1 6379)"
    """
    from uniklab import validate

    lab = common.lab(ctx)
    lab.reconcile()
    common.out.print(str(lab.channel(name, validate.port(port, "channel port"))), soft_wrap=True)
