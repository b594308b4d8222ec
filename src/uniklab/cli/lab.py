"""uniklab lab: a virtual Xen host (Xen + a PV dom0 under QEMU) reachable over SSH."""

from __future__ import annotations

import dataclasses
import time

import click

from uniklab.cli import common, progress
from uniklab.hosts import virtual_xen
from uniklab.paths import default_paths

name_option = click.option(
    "--name", default=virtual_xen.DEFAULT_NAME, show_default=True, help="Name of the lab."
)


@click.group()
def lab() -> None:
    """Boot, inspect and stop a virtual Xen host (lab in a box)."""


@lab.command("up")
@name_option
@click.option(
    "--timeout",
    type=float,
    default=virtual_xen.UP_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the lab's Xen toolstack to answer over ssh.",
)
@click.option(
    "--libvirt",
    is_flag=True,
    help="Run libvirtd (its Xen driver) in the dom0 too, and register the lab also as "
    "libvirt host NAME-libvirt.",
)
@common.json_option
@click.pass_context
def up(ctx: click.Context, name: str, timeout: float, libvirt: bool, as_json: bool) -> None:
    """Boot Xen with a PV dom0 under QEMU; return once its Xen toolstack answers over ssh, and
    register it as host NAME in the inventory.  A lab that already runs is left as it is."""
    start = time.monotonic()
    uk = common.lab(ctx)
    with progress.shown(f"lab {name}") as say:
        host = virtual_xen.up(uk.paths, name, timeout=timeout, progress=say, libvirt=libvirt)
    uk.hosts.add(**host.inventory_fields(), labels={"lab": "virtual"}, replace=True)
    if host.libvirt:
        uk.hosts.add(**host.libvirt_fields(), labels={"lab": "virtual"}, replace=True)
    if as_json:
        common.print_json(dataclasses.asdict(host))
        return
    common.out.print(
        f"lab {host.name} up in {time.monotonic() - start:.1f}s: "
        f"ssh -i {host.identity_file} -o UserKnownHostsFile={host.known_hosts} "
        f"-p {host.ssh_port} {host.ssh_target}"
    )
    if host.libvirt:
        common.out.print(
            f"libvirt host {host.libvirt_name}: virsh -c '{host.libvirt_uri()}'", soft_wrap=True
        )


@lab.command("down")
@name_option
@click.pass_context
def down(ctx: click.Context, name: str) -> None:
    """Destroy uniklab's instances on the lab, stop its QEMU, forget the host."""
    uk = common.lab(ctx)
    # The lab's host as xl's and as libvirt's (lab up --libvirt).
    names = {name, f"{name}-libvirt"}
    for row in uk.store.instances():
        if row.host in names:
            uk.destroy(row.name)
    virtual_xen.down(uk.paths, name)
    for h in uk.hosts.ls():
        if h.name in names:
            uk.hosts.rm(h.name, [])
    common.out.print(f"lab {name} down")


@lab.command("status")
@name_option
@common.json_option
def status(name: str, as_json: bool) -> None:
    """Whether the lab runs, and where to reach it."""
    st = virtual_xen.status(default_paths(), name)
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
