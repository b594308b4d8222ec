"""uniklab check: run the image's probe once against a running instance."""

from __future__ import annotations

import click

from uniklab.cli import common, complete


@click.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete.instances)
@click.option("--timeout", type=float, default=5.0, show_default=True)
@common.json_option
@click.pass_context
def check(ctx: click.Context, names: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Probe instances (Redis: PING and a SET/GET round trip); non-zero if any fails.

    \b
    Examples:
      uniklab check r1
      uniklab check --json $(uniklab ps -q --filter state=running)
    """
    results = []
    for name in names:
        r = common.lab(ctx).check(name, timeout=timeout)
        results.append({"name": name, "ok": r.ok, "detail": r.detail, "latency_ms": r.latency_ms})
        if not as_json:
            common.out.print(f"{name}: ok, {r.detail} ({r.latency_ms:.1f} ms)")
    if as_json:
        common.print_json(results)
