"""uniklab ps: list instances, with columns like `xl list` and filters like `docker ps`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from uniklab.cli import common, complete
from uniklab.errors import UsageError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from uniklab.lab import InstanceView

COLUMNS = [
    "Name", "ID", "Mem", "VCPUs", "State", "Time(s)", "Address", "Ports", "Image", "Backend",
    "Host",
]  # fmt: skip
FILTER_KEYS = ("state", "label", "name")
# The store's states (state/store.py), here so that completion need not import it.
STATES = ("running", "paused", "stopped", "exited", "crashed", "creating")


@dataclass(frozen=True)
class Filters:
    """``--filter`` terms, all of which an instance must match (docker ps's sense)."""

    states: tuple[str, ...] = ()
    labels: tuple[tuple[str, str | None], ...] = ()  # (key, value); None: the key is set
    names: tuple[str, ...] = ()  # substrings of the name

    @classmethod
    def parse(cls, items: Sequence[str]) -> Filters:
        from uniklab import validate
        from uniklab.state.store import CRASHED, CREATING, EXITED, PAUSED, RUNNING, STOPPED

        states: list[str] = []
        labels: list[tuple[str, str | None]] = []
        names: list[str] = []
        for item in items:
            key, eq, value = item.partition("=")
            if key not in FILTER_KEYS or not eq:
                raise UsageError(
                    f"invalid filter {validate.short(item)}: use state=STATE, "
                    "label=KEY[=VALUE] or name=SUBSTRING"
                )
            if key == "state":
                known = (RUNNING, PAUSED, STOPPED, EXITED, CRASHED, CREATING)
                if value not in known:
                    raise UsageError(
                        f"invalid filter {validate.short(item)}: a state is one of "
                        f"{', '.join(known)}"
                    )
                states.append(value)
            elif key == "label":
                if "=" in value:
                    labels.append(validate.label_pair(value))
                else:  # label=KEY: the key is set, to any value
                    validate.labels({value: ""})
                    labels.append((value, None))
            else:
                names.append(value)
        return cls(tuple(states), tuple(labels), tuple(names))

    def match(self, view: InstanceView) -> bool:
        row = view.row
        # A repeated state widens (state=exited and state=crashed: either), like docker's.
        if self.states and row.state not in self.states:
            return False
        for key, value in self.labels:
            if key not in row.labels or (value is not None and row.labels[key] != value):
                return False
        return all(part in row.name for part in self.names)


def _complete_filter(incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    terms = [*(f"state={s}" for s in STATES), "label=", "name="]
    return [CompletionItem(t) for t in terms if t.startswith(incomplete)]


def ports(view: InstanceView) -> str:
    """Published ports as ``127.0.0.1:HOST->GUEST``, comma-separated."""
    return ",".join(f"127.0.0.1:{h}->{g}" for h, g in view.forwards)


def address(view: InstanceView) -> str:
    """Where a client on this machine connects (the ports are in their own column)."""
    return "127.0.0.1" if view.forwards else view.address


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
@click.option("--host", help="Only instances on this host.", shell_complete=complete.hosts)
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only instances matching state=STATE, label=KEY[=VALUE] or name=SUBSTRING "
    "(repeatable: all must match; a repeated state matches either).",
    shell_complete=lambda ctx, param, incomplete: _complete_filter(incomplete),
)
@click.option("-q", "--quiet", is_flag=True, help="Only the names, one per line.")
@common.json_option
@click.pass_context
def ps(
    ctx: click.Context,
    show_all: bool,
    labels: tuple[str, ...],
    host: str | None,
    filters: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """List instances: Name ID Mem VCPUs State Time(s) Address Ports Image Backend Host.

    A clone of a template (run --template) says "(clone)" after its backend.

    \b
    Examples:
      uniklab ps
      uniklab ps -q --filter state=crashed     names only
      uniklab ps --filter label=team=db --filter name=redis
      uniklab ps --host xd3 --json
    """
    from uniklab import validate

    if quiet and as_json:
        raise UsageError("-q and --json: choose one")
    want = dict(validate.label_pair(item) for item in labels)
    chosen = Filters.parse(filters)
    views = common.lab(ctx).ps(labels=want)
    if host:
        common.lab(ctx).hosts.get(host)
        views = [v for v in views if v.row.host == host]
    views = [v for v in views if chosen.match(v)]
    if quiet:
        click.echo("".join(f"{v.name}\n" for v in views), nl=False)
        return
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
                address(v),
                ports(v),
                v.row.image,
                v.row.backend + (" (clone)" if v.clone_of else ""),
                v.row.host,
            )
        )
    common.table(COLUMNS, rows)
