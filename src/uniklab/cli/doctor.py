"""uniklab doctor: this machine's prerequisites, feature by feature, with their fixes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from uniklab.cli import common
from uniklab.errors import UniklabError

if TYPE_CHECKING:
    from uniklab import doctor as doctor_mod

COLUMNS = ("Feature", "Check", "Status", "Detail", "Fix")
_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "red"}


@click.command()
@common.json_option
def doctor(as_json: bool) -> None:
    """Check this machine's prerequisites for each feature; print how to fix each.

    OK, WARN (optional, or slower: TCG instead of KVM) or FAIL (running or baking the
    default images cannot work); the exit status is non-zero when one FAILs.  An
    inventory host is checked with 'uniklab host doctor NAME'.

    \b
    Examples:
      uniklab doctor
      uniklab doctor --json | jq -r '.[] | select(.status != "OK") | .fix'
    """
    from uniklab import buildcache
    from uniklab import doctor as doctor_mod

    findings = doctor_mod.check(
        doctor_mod.Machine(cache=buildcache.root("facts", "UNIKLAB_FACTS_CACHE"))
    )
    if as_json:
        common.print_json([f.as_dict() for f in findings])
    else:
        _table(findings)
    bad = doctor_mod.failed(findings)
    if bad:
        raise UniklabError(
            f"this machine lacks what {len(bad)} required check(s) need: "
            + ", ".join(f"{f.check} ({f.feature})" for f in bad)
        )


def _table(findings: list[doctor_mod.Finding]) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in COLUMNS:
        # Detail and fix fold on a narrow terminal rather than lose the command's end.
        t.add_column(c, no_wrap=c not in ("Detail", "Fix"), overflow="fold")
    for f in findings:
        status = f"[{_STYLE[f.status]}]{f.status}[/]"
        t.add_row(escape(f.feature), escape(f.check), status, escape(f.detail), escape(f.fix))
    common.out.print(t)
