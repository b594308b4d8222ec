"""uniklab rumprun: rumprun's launcher command line, run by uniklab."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import click

from uniklab import rumprun_args
from uniklab.cli import common
from uniklab.errors import NotFoundError, UsageError
from uniklab.hosts.service import local_is_dom0
from uniklab.lab import Lab
from uniklab.rumprun_compat import translate
from uniklab.state.store import RUNNING


# rumprun's own options are parsed by rumprun_args (getopts, like its script): click sees
# one opaque argv, and --help/-h is recognised here, before it.
@click.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
    options_metavar="[--host HOST]",
)
@click.option("--host", help="For xen: the inventory host to run on (default: see below).")
@click.argument(
    "argv",
    nargs=-1,
    type=click.UNPROCESSED,
    metavar="[-DS] PLATFORM [GUEST OPTIONS] APP [ARGS]...",
)
@click.pass_context
def rumprun(ctx: click.Context, host: str | None, argv: tuple[str, ...]) -> None:
    """Launch like rumprun's own launcher (its options as app-tools/rumprun reads them).

    PLATFORM is xen, qemu or kvm; the guest options are -N NAME, -M MB,
    -I TAG,KIND,mac=MAC,bridge=NET (NET: the uniklab network to attach to; on
    qemu/kvm also rumprun's -I TAG,vioif,'-net user,hostfwd=tcp::H-:G', '-net
    bridge,br=B' or '-net tap,ifname=T'), -W TAG,inet,dhcp or
    -W TAG,inet,static,ADDR/PREFIX[,GW], -e VAR=VAL, -b FILE[,MOUNT] (rumprun
    images, QEMU), -i (follow the console; Ctrl-C destroys the guest) and -d.
    -g, -D and -p are refused.  Without -i it prints PLATFORM:PID NAME and returns.

    xen runs on this machine when it is a dom0, else on --host, else on the inventory's
    only Xen host (the virtual one of 'uniklab lab up', for instance).

    \b
    Example:
      uniklab rumprun qemu -N redis -M 128 \\
        -I net0,vioif,mac=00:11:22:33:44:55,bridge=lab -W net0,inet,dhcp redis
    """
    if argv[:1] in (("-h",), ("--help",)):
        click.echo(ctx.get_help())
        ctx.exit()
    inv = rumprun_args.parse(list(argv))
    lab = common.lab(ctx)
    lab.reconcile()
    t = translate(inv, lab.store.networks())
    options = t.options
    if t.backend == "xen":
        options = replace(options, host=_xen_host(lab, host))
    elif host is not None:
        raise UsageError(f"--host goes with rumprun xen; {inv.platform} runs here")
    view = lab.run(t.image, options)
    if t.interactive:
        _follow(lab, view.name)
        return
    # rumprun prints PLATFORM:ID of a detached guest: xen:DOMID, qemu:PID.
    ident = view.row.runtime.get("domid") if t.backend == "xen" else view.row.pid
    common.out.print(f"{inv.platform}:{ident} {view.name}")


def _xen_host(lab: Lab, given: str | None) -> str:
    """Where `rumprun xen` runs: --host, this machine if a dom0, else the one Xen host."""
    if given is not None:
        return given
    if local_is_dom0():
        return "local"
    xen = [h.name for h in lab.hosts.ls() if h.hypervisor == "xen"]
    if len(xen) == 1:
        return xen[0]
    raise NotFoundError(
        "no Xen here: this machine is not a Xen dom0 and the inventory has "
        + (f"several Xen hosts ({', '.join(xen)}): give --host" if xen else "no Xen host")
        + " (uniklab lab up boots a virtual one; or use 'uniklab rumprun qemu …')"
    )


def _follow(lab: Lab, name: str) -> None:
    """-i: show the console until the guest stops; Ctrl-C destroys it, as rumprun's does."""
    shown = 0
    try:
        while True:
            text = lab.logs(name)
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
            if lab.get(name).state != RUNNING:
                return
            time.sleep(0.2)
    except KeyboardInterrupt:
        lab.destroy(name)
        raise
