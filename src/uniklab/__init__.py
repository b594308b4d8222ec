"""uniklab: bake applications into unikernel-style images and run them on QEMU (and Xen).

The Python API (``uniklab.run``, ``bake``, ``ps``, ``destroy``, ``images``) lives in
``uniklab.api`` and is re-exported here.
"""

from uniklab.api import Client, Image, Instance, Stats, bake, destroy, images, ps, run
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
from uniklab.net.attach import NicRequest

__all__ = [
    "BakeError",
    "Client",
    "CommandError",
    "ConflictError",
    "Image",
    "Instance",
    "LaunchError",
    "NicRequest",
    "NotFoundError",
    "ProbeTimeoutError",
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
__version__ = "0.1.0"
