"""uniklab test: bring up a spec's instances, run its test commands, report (JUnit XML)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from uniklab.cli import common
from uniklab.errors import UniklabError

if TYPE_CHECKING:
    from uniklab.testing import runner


@click.command()
@click.argument("spec_file", metavar="SPEC.toml", type=click.Path(path_type=Path))
@click.option(
    "--junit",
    "junit",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write a JUnit XML report here.",
)
@click.pass_context
def test(ctx: click.Context, spec_file: Path, junit: Path | None) -> None:
    """Run SPEC.toml: its networks and instances up, its test commands (on this machine,
    with NAME_ADDR, NAME_HOST, NAME_PORT of each instance in their environment), then
    everything torn down.  Exits non-zero if a test fails.

    \b
    Example:
      uniklab test examples/lab.toml --junit out/junit.xml
    """
    from rich.markup import escape

    from uniklab.api import Client
    from uniklab.testing import runner, spec
    from uniklab.testing import session as owner

    s = spec.load(spec_file)
    suite = s.name or spec_file.stem
    client = Client(common.lab(ctx).paths.home)
    ctx.call_on_close(client.close)

    def show(case: runner.CaseResult) -> None:
        mark = {"passed": "[green]PASS[/]", "skipped": "[yellow]SKIP[/]"}.get(
            case.outcome, "[red]FAIL[/]"
        )
        common.out.print(f"{mark} {case.name} ({case.seconds:.1f}s)", markup=True)
        if case.outcome in ("failed", "error"):
            common.out.print(case.detail, markup=False)

    hint = owner.fast_hint()
    if hint and any(owner.is_recipe(d.image) for d in s.instances):
        common.err.print(f"uniklab: {hint}", markup=False)
    with common.err.status(f"{escape(str(suite))}: starting") as status:
        result = runner.run_spec(
            s,
            client,
            base=spec_file.resolve().parent,
            suite=suite,
            progress=lambda msg: status.update(escape(f"{suite}: {msg}")),
            result=show,
        )
    if junit:
        runner.write_junit(result, junit)
    passed = result.count("passed")
    summary = (
        f"{suite}: {passed} passed, {result.count('failed')} failed, "
        f"{result.count('error')} errors, {result.count('skipped')} skipped "
        f"in {result.seconds:.1f}s"
    )
    if not result.ok:
        raise UniklabError(summary)
    common.out.print(summary)
