"""uniklab config: the configured defaults of options (file and environment), and the
file that is read."""

from __future__ import annotations

import click

from uniklab import config as cfg
from uniklab.cli import common


@click.group()
def config() -> None:
    """Show the configured defaults of options, and where each one comes from.

    A command-line option beats its environment variable (UNIKLAB_<VERB>_<KEY>), which
    beats the file ($UNIKLAB_CONFIG, else $XDG_CONFIG_HOME/uniklab/config.toml), which
    beats the built-in default.

    \b
    Examples:
      uniklab config show
      uniklab config show --json
      UNIKLAB_RUN_MEMORY=256M uniklab config show
      $EDITOR "$(uniklab config path)"
    """


def _option(ctx: click.Context, s: cfg.Setting) -> click.Parameter:
    """The option ``s`` gives the default of."""
    root = ctx.find_root()
    group = root.command
    assert isinstance(group, click.Group)
    command = group.get_command(root, s.verb)
    assert command is not None, s.verb
    return next(p for p in command.params if p.name == s.key)


def _builtin(param: click.Parameter) -> object:
    """The option's own default, as its help shows it (None: the verb decides)."""
    if isinstance(param, common.FilledLater):
        return param.shown_default()
    return param.to_info_dict()["default"]


@config.command("show")
@common.json_option
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Print each setting's effective value and where it comes from.

    SOURCE is the file, the environment variable, or 'default' (the option's own).
    """
    loaded = cfg.load()
    rows, shown = [], []
    for s in cfg.SETTINGS:
        param = _option(ctx, s)
        got = loaded.values.get(s.dotted)
        row = {
            "setting": s.dotted,
            "value": _builtin(param) if got is None else got.value,
            "source": got.source if got else "default",
            "origin": got.origin if got else None,  # the file's path, the variable's name
            "env": s.env,
            "option": f"uniklab {s.verb} {max(param.opts, key=len)}",
        }
        rows.append(row)
        source = (
            "default" if got is None else got.origin if got.source == "file" else f"${got.origin}"
        )
        value = "-" if row["value"] is None else row["value"]
        shown.append((s.dotted, value, source, row["option"]))
    if as_json:
        common.print_json(
            {"file": str(loaded.path), "found": loaded.path.is_file(), "settings": rows}
        )
        return
    state = "" if loaded.path.is_file() else " (not found: built-in defaults)"
    click.echo(f"config file: {loaded.path}{state}")
    common.table(["SETTING", "VALUE", "SOURCE", "OPTION"], shown)


@config.command("path")
def path() -> None:
    """Print the path of the configuration file that is read (it may not exist)."""
    click.echo(str(cfg.path()))
