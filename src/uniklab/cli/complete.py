"""Shell completion of the names a verb takes: instances, images, networks, hosts.

A completion runs at every Tab, so it reads ``state.db`` read-only with sqlite3: no Lab,
no reconcile, no hypervisor asked, nothing created or migrated.  When the store cannot be
read (no home yet, locked, damaged) it completes nothing rather than print an error.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem


def _rows(sql: str) -> list[tuple[object, ...]]:
    from uniklab.paths import default_paths

    db = default_paths().db
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=0.5)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _items(pairs: list[tuple[str, str]], incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    seen: set[str] = set()
    out = []
    for value, help_text in pairs:
        if value.startswith(incomplete) and value not in seen:
            seen.add(value)
            out.append(CompletionItem(value, help=help_text or None))
    return out


def builtin_recipes() -> list[str]:
    """``bake.recipe.builtin_names()``, without importing the recipe models."""
    from importlib import resources

    pkg = resources.files("uniklab.recipes")
    return sorted(p.name[:-5] for p in pkg.iterdir() if p.name.endswith(".toml"))


def instances(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    rows = _rows("SELECT name, state, image FROM instances ORDER BY id")
    return _items([(str(n), f"{s}, {i}") for n, s, i in rows], incomplete)


def images(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    rows = _rows("SELECT name, tag FROM images ORDER BY name, tag")
    return _items([(f"{n}:{t}", "") for n, t in rows], incomplete)


def runnable(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """What ``run`` takes: an image, a built-in recipe (baked on first run), or a file."""
    from click.shell_completion import CompletionItem

    if "/" in incomplete or incomplete.startswith((".", "~")):
        return [CompletionItem(incomplete, type="file")]
    recipes = [(r, "built-in recipe") for r in builtin_recipes()]
    return images(ctx, param, incomplete) + _items(recipes, incomplete)


def networks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    if "," in incomplete:  # run --net NET,mac=…: only the network's name is completed
        return []
    rows = _rows("SELECT name, bridge FROM networks ORDER BY name")
    return _items([(str(n), f"bridge {b}") for n, b in rows], incomplete)


def hosts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    rows = _rows("SELECT name FROM hosts ORDER BY name")
    return _items([("local", "this machine"), *((str(n), "") for (n,) in rows)], incomplete)


def run_hosts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``run --host``: a host, or ``auto`` (the one with the most free memory)."""
    return hosts(ctx, param, incomplete) + _items([("auto", "most free memory")], incomplete)
