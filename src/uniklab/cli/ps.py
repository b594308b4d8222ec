"""uniklab ps: list instances, with columns like `xl list`."""

from __future__ import annotations

import click

from uniklab import validate
from uniklab.cli import common


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, default=True, hidden=True)
@click.option(
    "-l",
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only instances with this label.",
)
@click.option("--host", help="Only instances on this host.")
@common.json_option
@click.pass_context
def ps(
    ctx: click.Context, show_all: bool, labels: tuple[str, ...], host: str | None, as_json: bool
) -> None:
    """List instances: Name ID Mem VCPUs State Time(s) Address Image Backend."""
    want = dict(validate.label_pair(item) for item in labels)
    views = common.lab(ctx).ps(labels=want)
    if host:
        common.lab(ctx).hosts.get(host)
        views = [v for v in views if v.row.host == host]
    if as_json:
        common.print_json([v.as_dict() for v in views])
        return
    rows = []
    for v in views:
        cpu = v.inspection.cpu_seconds if v.inspection and v.inspection.cpu_seconds else None
        state = v.state if not v.row.exit_reason else f"{v.state} ({v.row.exit_reason})"
        rows.append(
            (
                v.name,
                v.row.id,
                v.row.memory_mb,
                v.row.vcpus,
                state,
                f"{cpu:.1f}" if cpu is not None else "",
                v.address,
                v.row.image,
                v.row.backend,
            )
        )
    common.table(
        ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)", "Address", "Image", "Backend"], rows
    )
