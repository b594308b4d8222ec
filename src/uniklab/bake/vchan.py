"""Images for Xen channels (issue 18): a baked Linux image's initramfs with the vchan
helper in front of its entrypoint.

The guest side of a Xen channel is ``uniklab-vchan`` (``uniklab.guest.vchan``): it starts
the vchan servers that the domain's xenstore lists, then execs the app, so the init still
runs and supervises the app itself.  The helper and the kernel's drivers it needs
(``/dev/xen/evtchn``, ``gntalloc``, ``gntdev``: modules of the host's kernel, built into
the specialised one) come as an overlay on the image's root; nothing is baked again, and
the same image boots with and without channels.
"""

from __future__ import annotations

import json
from pathlib import Path

from uniklab import buildcache
from uniklab.bake import cpio, kmod
from uniklab.errors import BakeError
from uniklab.guest.build import build_vchan

__all__ = ["HELPER", "MODULES", "channel_initrd", "helper_binary"]

HELPER = "/uniklab/vchan"
# evtchn and gntalloc serve a vchan; gntdev maps a peer's (a guest that is a client).
MODULES = ("xen_evtchn", "xen_gntalloc", "xen_gntdev")
IMAGE_JSON = "/uniklab/image.json"
MODULES_ROOT = Path("/lib/modules")


def helper_binary() -> Path:
    """uniklab-vchan, built once per machine: the guest's side of a channel and, with
    ``--listen``, the dom0's."""
    return build_vchan(buildcache.root("init", "UNIKLAB_INIT_CACHE"))


def channel_initrd(image_initrd: Path, kernel: Path) -> bytes:
    """``image_initrd`` with the vchan helper in front of the entrypoint and the drivers
    it needs loaded by the init (when ``kernel`` has them as modules), compressed as the
    image was.  Deterministic: the same image gives the same bytes (uploaded once)."""
    raw = image_initrd.read_bytes()
    data = cpio.decompress(raw)
    found = cpio.read_file(data, IMAGE_JSON, every=True)
    if found is None:
        raise BakeError(f"{image_initrd}: no {IMAGE_JSON}: not a uniklab Linux image")
    doc = json.loads(found)
    entry = doc.get("entrypoint")
    if not isinstance(entry, list) or not entry:
        raise BakeError(f"{image_initrd}: {IMAGE_JSON} has no entrypoint")
    if entry[0] == HELPER:
        return raw  # already one
    overlay = cpio.CpioArchive()
    helper = helper_binary()
    overlay.add_file_from(HELPER, helper, mode=0o755)
    release = kmod.kernel_release_of(kernel)
    listed = doc.get("modules") or []
    if (MODULES_ROOT / release / "modules.dep").is_file():
        # The kernel's own modules (the host's kernel): what the helper needs, after the
        # image's (the init loads them in order).
        mods = kmod.module_closure(list(MODULES), kernel_release=release)
        for m in mods:
            overlay.add_file(str(m.image_path), kmod.module_bytes(m))
        listed = [*listed, *(str(m.image_path) for m in mods if str(m.image_path) not in listed)]
    doc["modules"] = listed
    doc["entrypoint"] = [HELPER, "--", *entry]
    overlay.add_file(IMAGE_JSON, json.dumps(doc, indent=1).encode())
    # The kernel unpacks concatenated archives in order, a later file replacing an
    # earlier one; one compressed stream, as the image was (pv_initrd's way).
    pad = b"\0" * (-len(data) % 4)
    return cpio.compress(data + pad + overlay.to_bytes(), cpio.compression_of(raw))
