"""`uniklab gc`: find and remove what uniklab owns that no state row explains.

Ownership is recognisable without the store: QEMU and dnsmasq processes name a path under
this UNIKLAB_HOME on their command line; taps and bridges carry this home's tag in their
names (``ukt<tag>…``, ``ukb<tag>…``); staging and image directories live in its store.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from uniklab.backends import process
from uniklab.lab import Lab, nics_of
from uniklab.net import links
from uniklab.net.service import short_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leftover:
    kind: str  # process | rundir | tap | bridge | staging | image
    name: str
    detail: str
    marker: str = ""  # for processes: what their command line must contain to be ours


def _processes(marker: str) -> list[tuple[int, str]]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and ("qemu-system" in cmd or "dnsmasq" in cmd):
            out.append((int(proc.name), cmd.strip()))
    return out


def find(lab: Lab) -> list[Leftover]:
    lab.reconcile()
    rows = lab.store.instances()
    rundirs = {str(r.runtime.get("rundir")) for r in rows}
    nets = lab.store.networks()
    net_dirs = {n.rundir for n in nets}
    home = str(lab.paths.home)
    found: list[Leftover] = []
    for pid, cmd in _processes(home + "/"):
        owned = any(d and d + "/" in cmd for d in rundirs | net_dirs)
        if not owned:
            found.append(Leftover("process", str(pid), cmd[:120], marker=home + "/"))
    for d in sorted(lab.paths.run.iterdir()) if lab.paths.run.exists() else []:
        if str(d) not in rundirs:
            found.append(Leftover("rundir", str(d), "runtime directory of no instance"))
    tag = short_hash(str(lab.networks.rundir))
    taps = {n.tap for r in rows for n in nics_of(r)}
    for t in links.taps(f"ukt{tag}"):
        if t not in taps:
            found.append(Leftover("tap", t, "tap of no instance"))
    bridges = {n.bridge for n in nets if not n.netns}
    for b in links.taps(f"ukb{tag}"):
        if b not in bridges:
            found.append(Leftover("bridge", b, "bridge of no network"))
    for d in lab.paths.images.glob(".tmp-*"):
        found.append(Leftover("staging", str(d), "half-written image"))
    digests = {i.digest.replace(":", "-") for i in lab.store.images()}
    digests |= {r.digest.replace(":", "-") for r in rows}
    for d in lab.paths.images.iterdir():
        if not d.name.startswith(".") and d.name not in digests:
            found.append(Leftover("image", str(d), "image no tag or instance uses"))
    return found


def remove(items: list[Leftover]) -> None:
    for item in items:
        log.info("removing %s %s", item.kind, item.name)
        if item.kind == "process":
            process.stop(int(item.name), item.marker, grace=3.0)
        elif item.kind in ("rundir", "staging", "image"):
            shutil.rmtree(item.name, ignore_errors=True)
        elif item.kind in ("tap", "bridge"):
            links.delete_link(item.name)
