"""The ``uniklab`` command: a group of verbs, one module each, and the one place that
turns errors into exit codes (a traceback only with -v) and SIGTERM/SIGHUP into Ctrl-C."""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, NamedTuple

import click

from uniklab import __version__, signals
from uniklab.cli import common
from uniklab.errors import LaunchError, ProbeTimeoutError, UniklabError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem


class Verb(NamedTuple):
    target: str  # "module:attribute" of the click command
    summary: str  # the first sentence of its help: what `uniklab --help` lists


# Each verb's module is imported only when that verb runs (or its own help or completion
# is asked for): `uniklab --help` and completing a verb's name read the summaries here.
# tests/cli/test_startup.py checks that each summary is what the verb's help says.
VERBS: dict[str, Verb] = {
    "bake": Verb(
        "uniklab.cli.bake:bake",
        "Bake RECIPE (a built-in name such as 'redis', or a recipe .toml) into an image.",
    ),
    "channel": Verb(
        "uniklab.cli.channel:channel",
        "Print the host's UNIX socket of instance NAME's channel to guest port PORT.",
    ),
    "check": Verb(
        "uniklab.cli.check:check",
        "Probe instances (Redis: PING and a SET/GET round trip); non-zero if any fails.",
    ),
    "config": Verb(
        "uniklab.cli.config:config",
        "Show the configured defaults of options, and where each one comes from.",
    ),
    "console": Verb(
        "uniklab.cli.console:console",
        "Attach this terminal to the serial console of instance NAME; Ctrl-] detaches.",
    ),
    "demo": Verb(
        "uniklab.cli.demo:demo",
        "Run the runbook for Redis: bake, run, probe with redis-cli, list, destroy.",
    ),
    "destroy": Verb(
        "uniklab.cli.destroy:destroy",
        "Destroy instances (like `xl destroy`): process, runtime files and state row.",
    ),
    "doctor": Verb(
        "uniklab.cli.doctor:doctor",
        "Check this machine's prerequisites for each feature; print how to fix each.",
    ),
    "events": Verb(
        "uniklab.cli.events:events",
        "Print what happens to instances: created, ready, exited, crashed, destroyed.",
    ),
    "gc": Verb(
        "uniklab.cli.gc:gc",
        "Find leftovers (processes, runtime dirs, taps, bridges, half-baked images, and "
        "domains on Xen hosts) and remove them.",
    ),
    "host": Verb("uniklab.cli.host:host", "Add, list, show, remove and check lab hosts."),
    "images": Verb(
        "uniklab.cli.images:images",
        "List baked images (or import one: uniklab images import FILE).",
    ),
    "ip": Verb("uniklab.cli.ip:ip", "Print the address of instance NAME."),
    "kernel": Verb(
        "uniklab.cli.kernel:kernel",
        "Specialised guest kernels (tinyconfig + uniklab's fragments, everything built in).",
    ),
    "lab": Verb("uniklab.cli.lab:lab", "Boot, inspect and stop a virtual Xen host (lab in a box)."),
    "logs": Verb("uniklab.cli.logs:logs", "Print the console log of instance NAME."),
    "net": Verb("uniklab.cli.net:net", "Create, list and remove bridged networks."),
    "pause": Verb(
        "uniklab.cli.lifecycle:pause",
        "Pause instances: freeze their vCPUs, keeping memory, NICs and ports (like `xl pause`).",
    ),
    "ps": Verb(
        "uniklab.cli.ps:ps",
        "List instances: Name ID Mem VCPUs State Time(s) Address Ports Image Backend Host.",
    ),
    "recipes": Verb(
        "uniklab.cli.recipes:recipes",
        "List the built-in recipes: the Debian package each needs, its ports and probe.",
    ),
    "restart": Verb(
        "uniklab.cli.lifecycle:restart",
        "Restart instances: a graceful stop (if running), then start.",
    ),
    "resume": Verb("uniklab.cli.lifecycle:resume", "Resume paused instances."),
    "rmi": Verb("uniklab.cli.rmi:rmi", "Remove one or more images."),
    "rumprun": Verb(
        "uniklab.cli.rumprun:rumprun",
        "Launch like rumprun's own launcher (its options as app-tools/rumprun reads them).",
    ),
    "run": Verb(
        "uniklab.cli.run:run", "Run IMAGE; ARGS after '--' are appended to the app's command line."
    ),
    "start": Verb(
        "uniklab.cli.lifecycle:start",
        "Start stopped instances again, with the same name, MAC address and ports.",
    ),
    "stats": Verb(
        "uniklab.cli.stats:stats",
        "Show live CPU%, memory, uptime and network bytes of running instances.",
    ),
    "stop": Verb(
        "uniklab.cli.lifecycle:stop",
        "Stop instances gracefully: the app gets SIGTERM, then SIGKILL after a timeout.",
    ),
    "store": Verb("uniklab.cli.store:store", "The state store (state.db) of this UNIKLAB_HOME."),
    "template": Verb(
        "uniklab.cli.template:template",
        "Templates: guests saved ready, that `run --template` clones instead of booting.",
    ),
    "test": Verb(
        "uniklab.cli.test:test",
        "Run SPEC.toml: its networks and instances up, its test commands (on this machine, "
        "with NAME_ADDR, NAME_HOST, NAME_PORT of each instance in their environment), then "
        "everything torn down.",
    ),
    "toolchain": Verb(
        "uniklab.cli.toolchain:toolchain",
        "Toolchains built from pinned sources (rumprun), once per machine.",
    ),
}


class LazyGroup(click.Group):
    """A group whose verbs are imported when used (click's "lazy loading subcommands"):
    listings (--help, completing a verb's name) show the summaries of ``VERBS``."""

    def __init__(self, *args: object, verbs: dict[str, Verb], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.verbs = verbs

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.verbs})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.verbs:
            module, _, attr = self.verbs[cmd_name].target.partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def listed(self, ctx: click.Context) -> list[tuple[str, click.Command]]:
        """Each visible verb: its command if loaded, else a stand-in carrying its summary."""
        found = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name) or click.Command(name, help=self.verbs[name].summary)
            if not cmd.hidden:
                found.append((name, cmd))
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = self.listed(ctx)
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            rows = [(name, cmd.get_short_help_str(limit)) for name, cmd in commands]
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        items = [
            CompletionItem(name, help=cmd.get_short_help_str())
            for name, cmd in self.listed(ctx)
            if name.startswith(incomplete)
        ]
        # The group's own options (click.Command's completion: no subcommands there).
        items.extend(click.Command.shell_complete(self, ctx, incomplete))
        return items


class _RichOnFirstRecord(logging.Handler):
    """Passes records to a rich handler made when the first one comes: most commands log
    nothing at the default level, and then never import rich's logging."""

    def __init__(self) -> None:
        super().__init__()
        self._rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._rich is None:
            from rich.logging import RichHandler

            self._rich = RichHandler(console=common.err, show_path=False)
            self._rich.setFormatter(self.formatter)
        self._rich.emit(record)


@click.group(cls=LazyGroup, verbs=VERBS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Show debug logs and tracebacks.")
@click.version_option(version=__version__, prog_name="uniklab")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Bake applications into unikernel-style images and run them on QEMU or Xen, on this
    machine or on lab hosts.

    \b
    Examples:
      uniklab run redis -p 6379:6379 --name r1    bake (once) and run Redis
      uniklab ps                                  list instances
      uniklab logs r1 ; uniklab destroy r1
      uniklab doctor                              what this machine can run
    """
    ctx.ensure_object(dict)["verbose"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[_RichOnFirstRecord()],
        force=True,
    )
    from uniklab import config  # not for --help or a completion: they run no callback

    if ctx.invoked_subcommand in config.VERBS:
        # The configured defaults of the verb's options (its own options beat them).
        ctx.default_map = config.load().default_map()


MAX_ERROR_LINE = 500


def one_line(message: str) -> str:
    """An error message as one line of bounded length (inputs can be huge or multi-line)."""
    text = " ".join(message.split("\n"))
    if len(text) > MAX_ERROR_LINE:
        text = f"{text[:MAX_ERROR_LINE]}... ({len(text) - MAX_ERROR_LINE} more characters)"
    return text


def _explain(exc: UniklabError) -> None:
    from rich.markup import escape

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
