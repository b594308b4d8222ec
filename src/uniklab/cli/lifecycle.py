"""uniklab stop, start, restart, pause, resume: an instance's life between run and destroy."""

from __future__ import annotations

from collections.abc import Callable

import click

from uniklab.cli import common, complete

# The seconds `stop` gives an app between SIGTERM and SIGKILL (lab.STOP_TIMEOUT; not
# imported: the help must not load the lab).
STOP_TIMEOUT = 10.0


def _names() -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.argument("names", nargs=-1, required=True, shell_complete=complete.instances)


def _timeout() -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "-t",
        "--timeout",
        type=click.FloatRange(0, 3600),
        default=STOP_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="Seconds the app has between SIGTERM and SIGKILL.",
    )


@click.command()
@_names()
@_timeout()
@click.pass_context
def stop(ctx: click.Context, names: tuple[str, ...], timeout: float) -> None:
    """Stop instances gracefully: the app gets SIGTERM, then SIGKILL after a timeout.

    The guest then powers off; the instance stays (state `stopped`, with the app's exit
    status in `ps --json`) until `start` or `destroy`.  A rumprun guest has no init to
    tell: it is powered off, its exit status unknown.  While `uniklab console` is attached
    to a QEMU guest, the stop request waits for it: the guest is powered off at the timeout.

    \b
    Examples:
      uniklab stop r1
      uniklab stop -t 30 r1 r2
    """
    lab = common.lab(ctx)
    common.each(names, "stop", lambda name: lab.stop(name, timeout=timeout))


@click.command()
@_names()
@click.pass_context
def start(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Start stopped instances again, with the same name, MAC address and ports.

    A published port that another program took meanwhile is replaced by a free one (`ps`
    shows it).  Like `run`, it returns once the image's probe answers.

    \b
    Examples:
      uniklab start r1
    """
    lab = common.lab(ctx)
    common.each(names, "start", lab.start)


@click.command()
@_names()
@_timeout()
@click.pass_context
def restart(ctx: click.Context, names: tuple[str, ...], timeout: float) -> None:
    """Restart instances: a graceful stop (if running), then start.

    \b
    Examples:
      uniklab restart r1
      uniklab restart -t 2 r1
    """
    lab = common.lab(ctx)
    common.each(names, "restart", lambda name: lab.restart(name, timeout=timeout))


@click.command()
@_names()
@click.pass_context
def pause(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Pause instances: freeze their vCPUs, keeping memory, NICs and ports (like `xl pause`).

    \b
    Examples:
      uniklab pause r1
      uniklab resume r1
    """
    lab = common.lab(ctx)
    common.each(names, "pause", lab.pause)


@click.command()
@_names()
@click.pass_context
def resume(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Resume paused instances.

    \b
    Examples:
      uniklab resume r1
    """
    lab = common.lab(ctx)
    common.each(names, "resume", lab.resume)
