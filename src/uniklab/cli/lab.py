"""uniklab lab: a virtual Xen host (Xen + a PV dom0 under QEMU) reachable over SSH."""

from __future__ import annotations

import dataclasses
import time

import click

from uniklab.cli import common
from uniklab.hosts import xenlab
from uniklab.paths import default_paths

name_option = click.option(
    "--name", default=xenlab.DEFAULT_NAME, show_default=True, help="Name of the lab."
)


@click.group()
def lab() -> None:
    """Boot, inspect and stop a virtual Xen host (lab in a box)."""


@lab.command("up")
@name_option
@click.option(
    "--timeout",
    type=float,
    default=xenlab.UP_TIMEOUT,
    show_default=True,
    help="Seconds to wait for 'xl list' to answer over ssh.",
)
@common.json_option
def up(name: str, timeout: float, as_json: bool) -> None:
    """Boot Xen with a PV dom0 under QEMU; return once 'xl list' answers over ssh.

    A lab that already runs is left as it is."""
    start = time.monotonic()
    host = xenlab.lab_up(default_paths(), name, timeout=timeout)
    if as_json:
        common.print_json(dataclasses.asdict(host))
        return
    common.out.print(
        f"lab {host.name} up in {time.monotonic() - start:.1f}s: "
        f"ssh -i {host.identity_file} -o UserKnownHostsFile={host.known_hosts} "
        f"-p {host.ssh_port} {host.ssh_target}"
    )


@lab.command("down")
@name_option
def down(name: str) -> None:
    """Stop the lab's QEMU and remove its runtime directory."""
    xenlab.lab_down(default_paths(), name)
    common.out.print(f"lab {name} down")


@lab.command("status")
@name_option
@common.json_option
def status(name: str, as_json: bool) -> None:
    """Whether the lab runs, and where to reach it."""
    st = xenlab.lab_status(default_paths(), name)
    if as_json:
        common.print_json(dataclasses.asdict(st))
        return
    uptime = f"{st.uptime:.0f}" if st.uptime is not None else ""
    common.table(
        ["NAME", "STATE", "PID", "SSH", "UPTIME(s)", "CONSOLE"],
        [
            [
                st.name,
                "running" if st.running else "down",
                st.pid,
                f"127.0.0.1:{st.ssh_port}" if st.ssh_port else "",
                uptime,
                st.console_log if st.running else "",
            ]
        ],
    )
