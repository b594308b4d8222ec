"""The ``uniklab`` command: a group of verbs, one module each, and the one place that
turns errors into exit codes (a traceback only with -v) and SIGTERM/SIGHUP into Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys

import click
from rich.logging import RichHandler
from rich.markup import escape

from uniklab import __version__, signals
from uniklab.cli import common
from uniklab.cli.bake import bake
from uniklab.cli.check import check
from uniklab.cli.demo import demo
from uniklab.cli.destroy import destroy
from uniklab.cli.gc import gc
from uniklab.cli.host import host
from uniklab.cli.images import images
from uniklab.cli.ip import ip
from uniklab.cli.kernel import kernel
from uniklab.cli.lab import lab
from uniklab.cli.logs import logs
from uniklab.cli.net import net
from uniklab.cli.ps import ps
from uniklab.cli.recipes import recipes
from uniklab.cli.rmi import rmi
from uniklab.cli.rumprun import rumprun
from uniklab.cli.run import run
from uniklab.cli.store import store
from uniklab.cli.test import test
from uniklab.cli.toolchain import toolchain
from uniklab.errors import LaunchError, ProbeTimeoutError, UniklabError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Show debug logs and tracebacks.")
@click.version_option(version=__version__, prog_name="uniklab")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Bake applications into unikernel-style images and run them on QEMU."""
    ctx.ensure_object(dict)["verbose"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=common.err, show_path=False)],
        force=True,
    )


for command in (
    bake,
    images,
    rmi,
    recipes,
    run,
    ps,
    ip,
    logs,
    check,
    destroy,
    demo,
    net,
    rumprun,
    test,
    host,
    gc,
    lab,
    kernel,
    store,
    toolchain,
):
    cli.add_command(command)


MAX_ERROR_LINE = 500


def one_line(message: str) -> str:
    """An error message as one line of bounded length (inputs can be huge or multi-line)."""
    text = " ".join(message.split("\n"))
    if len(text) > MAX_ERROR_LINE:
        text = f"{text[:MAX_ERROR_LINE]}... ({len(text) - MAX_ERROR_LINE} more characters)"
    return text


def _explain(exc: UniklabError) -> None:
    # The message holds user input: escaped, so '[/red]' in a name is text, not markup.
    line = escape(one_line(str(exc)))
    common.err.print(f"[red]error:[/red] {line}", markup=True, highlight=False)
    if isinstance(exc, ProbeTimeoutError) and exc.console_tail:
        common.err.print("console tail:\n" + exc.console_tail, markup=False)
    if isinstance(exc, LaunchError) and exc.output:
        common.err.print(exc.output.strip()[-2000:], markup=False)


def main(argv: list[str] | None = None) -> int:
    verbose = any(a in ("-v", "-vv", "--verbose") for a in (argv or sys.argv[1:]))
    try:
        # Killed by a CI timeout or a closed terminal, a command cleans up as on Ctrl-C.
        with signals.as_interrupts(take_over=True):
            cli.main(args=argv, prog_name="uniklab", standalone_mode=False)
    except UniklabError as exc:
        if verbose:
            logging.getLogger("uniklab").exception("failed")
        _explain(exc)
        return exc.exit_code
    except click.exceptions.Abort as exc:
        return _stopped("aborted", exc.__cause__)
    except click.ClickException as exc:
        # One line, like every other error (click's own form is a usage block).
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        common.err.print(f"error: {one_line(exc.format_message())}{hint}", markup=False)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _stopped("interrupted", exc)
    return 0


def _stopped(word: str, cause: BaseException | None) -> int:
    """Ctrl-C, SIGTERM or SIGHUP (what the command made is removed by now): 128 + signal."""
    signum = signals.signum_of(cause)
    with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
        shown = word if signum == signal.SIGINT else f"{word} ({signal.Signals(signum).name})"
        common.err.print(shown)
    return signals.exit_code(cause)


def entry() -> None:
    sys.exit(main())
