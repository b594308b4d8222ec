"""uniklab console: this terminal joined to a guest's serial console (like virsh console)."""

from __future__ import annotations

import click

from uniklab.cli import common, complete


@click.command()
@click.argument("name", shell_complete=complete.instances)
@click.pass_context
def console(ctx: click.Context, name: str) -> None:
    """Attach this terminal to the serial console of instance NAME; Ctrl-] detaches.

    Keys go to the guest as typed, Ctrl-C included; Ctrl-] (the escape of telnet, virsh
    console and xl console) detaches, and the command exits 0, as it does when the guest
    goes away.  A QEMU guest's console takes one client at a time; a Xen guest's is
    `xl console` on its host, over ssh.  Off a terminal, stdin goes to the guest and what
    it says is printed until stdin has ended and the guest is quiet for a second (at most
    ten).  To only watch, any number at once: uniklab logs -f NAME.

    \b
    Examples:
      uniklab console r1                  type to the guest; Ctrl-] to leave
      echo hello | uniklab console r1     send a line, print what comes back
    """
    from uniklab import consoles
    from uniklab.errors import UniklabError

    access = common.lab(ctx).attach(name)
    common.err.print(
        f"Connected to {name} (escape character is {consoles.ESCAPE_NAME})", markup=False
    )
    how = consoles.attach(access)
    if how == "closed":
        common.err.print(f"\n{name}: console closed (the guest is gone)", markup=False)
    elif how.startswith("exited"):
        raise UniklabError(f"{name}: the console command {how}")
    elif how == "detached" and access.socket is not None:
        common.err.print("", markup=False)  # the shell's prompt on a line of its own
