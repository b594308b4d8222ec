"""uniklab: bake applications into unikernel-style images and run them on QEMU (and Xen).

The Python API (``uniklab.run``, ``bake``, ``ps``, ``destroy``, ``images``, ``Instance``)
lives in ``uniklab.api`` and is re-exported here; it is imported on first use, so that
``import uniklab.errors`` (and the pytest plugin, loaded by every pytest run) stay cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uniklab.errors import (
    BakeError,
    CommandError,
    ConflictError,
    LaunchError,
    NotFoundError,
    ProbeTimeoutError,
    UniklabError,
    UsageError,
)

if TYPE_CHECKING:
    from uniklab.api import Client, Event, Image, Instance, Stats, destroy, images, ps, run
    from uniklab.net.attach import NicRequest
    from uniklab.options import RunOptions

# ``uniklab.bake`` is both a subpackage and the API's verb.  The subpackage is loaded here,
# first, so that importing it later does not rebind ``uniklab.bake`` to the module.
importlib.import_module("uniklab.bake")


def bake(recipe: str, *, tag: str = "latest", home: str | Path | None = None) -> Image:
    """Bake ``recipe`` (a built-in name or a recipe file) into an image; see ``uniklab.api``."""
    from uniklab import api

    return api.bake(recipe, tag=tag, home=home)


_LAZY = {
    "Client": "uniklab.api",
    "Event": "uniklab.api",
    "Image": "uniklab.api",
    "Instance": "uniklab.api",
    "Stats": "uniklab.api",
    "destroy": "uniklab.api",
    "images": "uniklab.api",
    "ps": "uniklab.api",
    "run": "uniklab.api",
    "NicRequest": "uniklab.net.attach",
    "RunOptions": "uniklab.options",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'uniklab' has no attribute {name!r}")


__all__ = [
    "BakeError",
    "Client",
    "CommandError",
    "ConflictError",
    "Event",
    "Image",
    "Instance",
    "LaunchError",
    "NicRequest",
    "NotFoundError",
    "ProbeTimeoutError",
    "RunOptions",
    "Stats",
    "UniklabError",
    "UsageError",
    "__version__",
    "bake",
    "destroy",
    "images",
    "ps",
    "run",
]
# The one place the version is written: pyproject reads it (dynamic), --version prints it.
__version__ = "0.3.0"
