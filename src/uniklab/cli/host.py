"""uniklab host: the inventory of lab hosts, and `doctor` to check one is prepped."""

from __future__ import annotations

from pathlib import Path

import click

from uniklab.backends import registry
from uniklab.cli import common, complete
from uniklab.errors import UniklabError, UsageError


@click.group()
def host() -> None:
    """Add, list, show, remove and check lab hosts."""


@host.command("add")
@click.argument("name")
@click.option("--ssh", "ssh", help="SSH target USER@ADDRESS (the host's data address).")
@click.option("--port", type=int, default=22, show_default=True, help="SSH port.")
@click.option("-i", "--identity", help="SSH private key file.")
@click.option("--known-hosts", help="A known_hosts file for this host (strict checking).")
@click.option("--data", help="Data-plane address (default: the SSH address).")
@click.option("--bmc", help="BMC / iLO address (inventory only; never contacted).")
@click.option("--hypervisor", type=click.Choice(registry.names()), default="xen", show_default=True)
@click.option(
    "--libvirt",
    "libvirt_uri",
    metavar="URI",
    help="Run guests through libvirt at URI (qemu:///system, qemu+ssh://root@h/system).",
)
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--max-instances",
    type=int,
    metavar="N",
    help="At most N live instances there (0: none; 'run --host auto' skips a full host).",
)
@click.option("--replace", is_flag=True, help="Replace an existing entry of that name.")
@click.pass_context
def add(
    ctx: click.Context,
    name: str,
    ssh: str | None,
    port: int,
    identity: str | None,
    known_hosts: str | None,
    data: str | None,
    bmc: str | None,
    hypervisor: str,
    libvirt_uri: str | None,
    labels: tuple[str, ...],
    max_instances: int | None,
    replace: bool,
) -> None:
    """Add host NAME to the inventory.

    \b
    Examples:
      uniklab host add xd3 --ssh root@172.20.10.161 -i ~/.ssh/lab -l rack=2
      uniklab host doctor xd3
      uniklab host add lv --libvirt qemu:///system
    """
    from uniklab import validate

    if data is None and ssh:
        data = ssh.rpartition("@")[2]
    kv = dict(validate.label_pair(item) for item in labels)
    h = common.lab(ctx).hosts.add(
        name=name,
        ssh=ssh,
        port=port,
        identity=identity,
        known_hosts=known_hosts,
        data=data,
        bmc=bmc,
        hypervisor="libvirt" if libvirt_uri else hypervisor,
        libvirt=libvirt_uri,
        labels=kv,
        max_instances=max_instances,
        replace=replace,
    )
    reach = f"libvirt {h.libvirt}" if h.libvirt else f"ssh {h.ssh}:{h.port}"
    common.out.print(f"added host {h.name} ({h.hypervisor}, {reach})")


@host.command("set")
@click.argument("name", shell_complete=complete.hosts)
@click.option("--max-instances", type=int, metavar="N", help="At most N live instances there.")
@click.option("--no-limit", is_flag=True, help="No instance limit there.")
@click.pass_context
def set_(ctx: click.Context, name: str, max_instances: int | None, no_limit: bool) -> None:
    """Change host NAME's instance limit (what 'run --host auto' respects, and 'run --host
    NAME' too).

    \b
    Examples:
      uniklab host set xd3 --max-instances 20
      uniklab host set xd3 --max-instances 0     drain it: no new instances
      uniklab host set xd3 --no-limit
    """
    if no_limit == (max_instances is not None):
        raise UsageError("give --max-instances N or --no-limit")
    h = common.lab(ctx).hosts.set(name, max_instances=None if no_limit else max_instances)
    limit = "no limit" if h.max_instances is None else f"at most {h.max_instances} instance(s)"
    common.out.print(f"host {h.name}: {limit}", markup=False)


@host.command("ls")
@common.json_option
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List hosts."""
    hosts = common.lab(ctx).hosts.ls()
    if as_json:
        common.print_json([h.as_dict() for h in hosts])
        return
    common.table(
        ["NAME", "HYPERVISOR", "SSH", "DATA", "BMC", "MAX", "LABELS"],
        [
            (
                h.name,
                h.hypervisor,
                f"{h.ssh}:{h.port}" if h.ssh else "",
                h.data or "",
                h.bmc or "",
                "" if h.max_instances is None else h.max_instances,
                ",".join(f"{k}={v}" for k, v in h.labels.items()),
            )
            for h in hosts
        ],
    )


@host.command("show")
@click.argument("name", shell_complete=complete.hosts)
@click.pass_context
def show(ctx: click.Context, name: str) -> None:
    """Show one host's entry as JSON."""
    common.print_json(common.lab(ctx).hosts.get(name).as_dict())


@host.command("rm")
@click.argument("name", shell_complete=complete.hosts)
@click.pass_context
def rm(ctx: click.Context, name: str) -> None:
    """Remove a host from the inventory (refused while instances run on it)."""
    lab = common.lab(ctx)
    users = [r.name for r in lab.store.instances() if r.host == name]
    lab.hosts.rm(name, users)
    common.out.print(f"removed host {name}")


@host.command("export")
@click.argument("names", nargs=-1, shell_complete=complete.hosts)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE, not stdout.")
@click.pass_context
def export(ctx: click.Context, names: tuple[str, ...], output: str | None) -> None:
    """Write the inventory (or hosts NAME...) as TOML, for 'uniklab host import'.

    \b
    Examples:
      uniklab host export -o lab-hosts.toml
      uniklab host export xd3 xd4 > rack2.toml
    """
    text = common.lab(ctx).hosts.export(names)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from exc
    common.err.print(f"wrote {output}", markup=False)


@host.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="Replace entries of the same names.")
@click.pass_context
def import_(ctx: click.Context, file: str, replace: bool) -> None:
    """Add the hosts of FILE (TOML, as 'uniklab host export' writes it).

    Every entry is checked first: on any problem (or a name already in the inventory,
    without --replace) nothing is added.

    \b
    Examples:
      uniklab host import lab-hosts.toml
      uniklab host import --replace rack2.toml
    """
    try:
        text = Path(file).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    hosts = common.lab(ctx).hosts.import_(text, file, replace=replace)
    names = ", ".join(h.name for h in hosts)
    common.out.print(f"imported {len(hosts)} host(s): {names}", markup=False)


@host.command("doctor")
@click.argument("name", shell_complete=complete.hosts)
@click.option("--bridge", default=None, help="A bridge guests join there [Xen: xenbr0].")
@common.json_option
@click.pass_context
def doctor(ctx: click.Context, name: str, bridge: str | None, as_json: bool) -> None:
    """Check that host NAME is prepped to run unikernels; print what to fix.

    Each host is judged by its hypervisor (local: this machine's, QEMU unless it is a
    Xen dom0); 'uniklab doctor' checks everything this machine needs, feature by feature.
    """
    from rich.markup import escape

    lab = common.lab(ctx)
    h = lab.hosts.get(name)
    checks = lab.backend_on(h).doctor(bridge=bridge)
    if as_json:
        common.print_json([c.__dict__ for c in checks])
    else:
        for c in checks:
            mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
            common.out.print(f"{mark} {escape(c.name)}: {escape(c.detail)}", markup=True)
            if not c.ok and c.fix:
                common.out.print(f"       fix: {c.fix}", markup=False)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise UniklabError(f"{name} is not prepped: {', '.join(failed)}")
