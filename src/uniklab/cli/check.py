"""uniklab check: run the image's probe once against a running instance."""

from __future__ import annotations

import click

from uniklab.cli import common


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--timeout", type=float, default=5.0, show_default=True)
@common.json_option
@click.pass_context
def check(ctx: click.Context, names: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Probe instances (Redis: PING and a SET/GET round trip); non-zero if any fails."""
    results = []
    for name in names:
        r = common.lab(ctx).check(name, timeout=timeout)
        results.append({"name": name, "ok": r.ok, "detail": r.detail, "latency_ms": r.latency_ms})
        if not as_json:
            common.out.print(f"{name}: ok, {r.detail} ({r.latency_ms:.1f} ms)")
    if as_json:
        common.print_json(results)
