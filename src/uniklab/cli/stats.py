"""uniklab stats: live figures of instances, like `docker stats` and `xl top`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from uniklab.cli import common, complete
from uniklab.cli.events import until_interrupted

if TYPE_CHECKING:
    from rich.table import Table

    from uniklab.stats import Stats

COLUMNS = ["NAME", "CPU%", "RSS", "MEM", "UPTIME", "NET RX / TX"]
INTERVAL = 1.0


def duration(seconds: float | None) -> str:
    """``45s``, ``12m05s``, ``3h07m``, ``2d04h``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def row(s: Stats) -> list[str]:
    def size(n: int | None) -> str:
        return "-" if n is None else common.human_size(n)

    live = s.uptime is not None
    net = "-"
    if s.net_rx_bytes is not None and s.net_tx_bytes is not None:
        net = f"{size(s.net_rx_bytes)} / {size(s.net_tx_bytes)}"
    return [
        s.name if live else f"{s.name} ({s.state})",
        "-" if s.cpu_percent is None else f"{s.cpu_percent:.1f}%",
        size(s.rss_bytes),
        f"{s.memory_mb}MB",
        duration(s.uptime),
        net,
    ]


def _rich_table(samples: list[Stats]) -> Table:
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in COLUMNS:
        t.add_column(c, no_wrap=True)
    for s in samples:
        t.add_row(*map(Text, row(s)))
    return t


def _json_lines(samples: list[Stats]) -> str:
    from datetime import UTC, datetime

    from uniklab.events import format_time

    now = format_time(datetime.now(UTC))
    return "".join(json.dumps({"time": now, **s.as_dict()}) + "\n" for s in samples)


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=complete.instances)
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@common.json_option
@click.pass_context
def stats(ctx: click.Context, names: tuple[str, ...], no_stream: bool, as_json: bool) -> None:
    """Show live CPU%, memory, uptime and network bytes of running instances.

    Refreshes every second until Ctrl-C (exit 0).  CPU% is of one host CPU, over the
    last interval; RSS is the hypervisor process's (Xen: the domain's memory), MEM the
    guest's.  NET counts what the guest received / sent on bridged NICs (QEMU taps, Xen
    vifs); user-mode networking shows "-".  Off a terminal each sample is a new table;
    with --json a JSON line per instance and sample (--no-stream: one JSON array).

    \b
    Examples:
      uniklab stats                       every running instance, live
      uniklab stats r1 r2 --no-stream     one sample of r1 and r2
      uniklab stats --json | jq .cpu_percent
    """
    from uniklab.stats import FIRST_INTERVAL, Sampler

    sampler = Sampler(common.lab(ctx), names)
    if no_stream:
        samples = next(sampler.stream(FIRST_INTERVAL))
        if as_json:
            common.print_json([s.as_dict() for s in samples])
        else:
            common.table(COLUMNS, [row(s) for s in samples])
        return
    stream = sampler.stream(INTERVAL)
    with until_interrupted(), contextlib.closing(stream):
        if as_json or not sys.stdout.isatty():
            for samples in stream:
                if as_json:
                    sys.stdout.write(_json_lines(samples))
                else:
                    common.table(COLUMNS, [row(s) for s in samples])
                    sys.stdout.write("\n")
                sys.stdout.flush()
        else:
            _live(stream)


def _live(stream: Iterator[list[Stats]]) -> None:
    from rich.live import Live

    with Live(_rich_table([]), console=common.out, auto_refresh=False) as live:
        for samples in stream:
            live.update(_rich_table(samples), refresh=True)
