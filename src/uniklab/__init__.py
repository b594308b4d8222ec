"""uniklab: bake applications into unikernel-style images and run them on QEMU (and Xen)."""

from uniklab.errors import UniklabError

__all__ = ["UniklabError", "__version__"]
__version__ = "0.1.0"
