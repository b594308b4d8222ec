"""uniklab store: the state database of this UNIKLAB_HOME (rebuild it when it is damaged)."""

from __future__ import annotations

import click

from uniklab.cli import common
from uniklab.paths import default_paths
from uniklab.state import rebuild as rebuild_mod


@click.group()
def store() -> None:
    """The state store (state.db) of this UNIKLAB_HOME.

    It remembers images, instances, networks and hosts.
    """


@store.command()
@click.option(
    "--force",
    is_flag=True,
    help="Also replace a store that is not damaged (its instances, networks and hosts are "
    "forgotten).",
)
@common.json_option
def rebuild(force: bool, as_json: bool) -> None:
    """Move a damaged state.db aside and make a new one from what is on disk.

    Images are tagged again from their manifests.  Guests still running from a runtime
    directory cannot be managed without their rows: they are listed, and 'uniklab gc'
    stops them.  Hosts and networks are not on disk: add them again.
    """
    # Not common.lab(): a Lab would open the store this command is about to replace.
    paths = default_paths()
    r = rebuild_mod.rebuild(paths, force=force)
    if as_json:
        common.print_json(
            {
                "moved_to": r.moved_to,
                "tagged": [{"ref": m.ref, "digest": m.digest} for m in r.tagged],
                "untagged": [{"ref": m.ref, "digest": m.digest} for m in r.untagged],
                "unreadable": r.unreadable,
                "rundirs": [{"path": d.path, "pid": d.pid} for d in r.rundirs],
                "netdirs": r.netdirs,
            }
        )
        return
    say = common.out.print
    if r.moved_to is not None:
        say(f"moved {paths.db} aside to {r.moved_to}", markup=False)
    for m in r.tagged:
        say(f"tagged {m.ref} {m.short_digest}", markup=False)
    for m in r.untagged:
        say(f"left untagged {m.short_digest} (an older {m.ref}; gc removes it)", markup=False)
    for d in r.unreadable:
        say(f"skipped {d}: no readable manifest", markup=False)
    for rd in r.rundirs:
        if rd.pid is not None:
            say(
                f"{rd.path}: QEMU {rd.pid} still runs, but without its row uniklab cannot "
                "manage it: 'uniklab gc' stops it",
                markup=False,
            )
        else:
            say(
                f"{rd.path}: runtime directory of a stopped guest: 'uniklab gc' removes it",
                markup=False,
            )
    for d in r.netdirs:
        say(
            f"{d}: network {d.name} is forgotten: 'uniklab gc' removes its bridge and "
            f"dnsmasq; 'uniklab net create {d.name}' makes it again",
            markup=False,
        )
    if r.moved_to is not None:
        say("the host inventory was in the old store only: 'uniklab host add' them again")
