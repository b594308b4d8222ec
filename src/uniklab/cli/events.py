"""uniklab events: follow what happens to instances, like `docker events`."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import click

from uniklab.cli import common
from uniklab.errors import UsageError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from uniklab.events import Event

FILTER_KEYS = ("event", "name")


def parse_filters(items: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
    """``--filter event=KIND`` / ``name=NAME`` terms as (kinds, names); a repeated key
    widens (either value), different keys narrow (both must match)."""
    from uniklab import validate
    from uniklab.events import KINDS

    kinds: list[str] = []
    names: list[str] = []
    for item in items:
        key, eq, value = item.partition("=")
        if key not in FILTER_KEYS or not eq or not value:
            raise UsageError(f"invalid filter {validate.short(item)}: use event=EVENT or name=NAME")
        if key == "event" and value not in KINDS:
            raise UsageError(
                f"invalid filter {validate.short(item)}: an event is one of {', '.join(KINDS)}"
            )
        (kinds if key == "event" else names).append(value)
    return kinds or None, names or None


def _complete_filter(incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    from uniklab.events import KINDS

    terms = [*(f"event={k}" for k in KINDS), "name="]
    return [CompletionItem(t) for t in terms if t.startswith(incomplete)]


def line(e: Event) -> str:
    """``TIME  EVENT  NAME  key=value ...``: the time in UTC, as recorded."""
    from uniklab.events import format_time

    detail = " ".join(f"{k}={v}" for k, v in e.detail.items())
    return f"{format_time(e.time)}  {e.event:<10} {e.name}  {detail}".rstrip()


@contextlib.contextmanager
def until_interrupted() -> Iterator[None]:
    """Ctrl-C ends a command that follows something (`events`, `stats`) with exit 0, as
    `docker events` does; SIGTERM and SIGHUP stay interruptions (128 + signal), and a
    reader that closed the pipe just ends it."""
    from uniklab import signals

    try:
        yield
    except KeyboardInterrupt as exc:
        if signals.signum_of(exc) != signal.SIGINT:
            raise
    except BrokenPipeError:
        # Python would complain flushing stdout at exit: point it at nothing.
        with contextlib.suppress(OSError):
            sys.stdout = open(  # noqa: SIM115  (left for the interpreter to close)
                "/dev/null", "w"
            )


@click.command()
@click.option(
    "--since",
    metavar="WHEN",
    help="Events from WHEN: a duration back (10m, 1h30m), a timestamp or a time. "
    "Default: the whole history kept with --no-follow, else new events only.",
)
@click.option("--until", metavar="WHEN", help="Stop at WHEN (same forms as --since).")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only events matching event=EVENT or name=NAME (repeatable; a repeated key "
    "matches either value).",
    shell_complete=lambda ctx, param, incomplete: _complete_filter(incomplete),
)
@click.option("--no-follow", is_flag=True, help="Print the events so far and exit.")
@common.json_option
def events(
    since: str | None,
    until: str | None,
    filters: tuple[str, ...],
    no_follow: bool,
    as_json: bool,
) -> None:
    """Print what happens to instances: created, ready, exited, crashed, destroyed.

    And restarted, stopped, started, paused, resumed.  Follows until Ctrl-C (exit 0) or
    --until.  The events are kept in UNIKLAB_HOME/events.jsonl, one JSON object a line,
    which programs can follow too (or use uniklab.api.events).

    \b
    Examples:
      uniklab events                              follow new events
      uniklab events --since 1h --no-follow       the last hour's
      uniklab events --json --filter name=r1      r1's, as JSON lines
      uniklab events --filter event=crashed --filter event=exited
    """
    from datetime import UTC, datetime

    from uniklab import events as ev
    from uniklab.paths import default_paths

    now = datetime.now(UTC)
    start = ev.parse_time(since, now=now) if since is not None else None
    end = ev.parse_time(until, now=now, what="--until") if until is not None else None
    kinds, names = parse_filters(filters)
    stream = ev.read(
        default_paths(), since=start, until=end, follow=not no_follow, kinds=kinds, names=names
    )
    with until_interrupted(), contextlib.closing(stream):
        for e in stream:
            sys.stdout.write((e.to_json() if as_json else line(e)) + "\n")
            sys.stdout.flush()
