"""`uniklab gc`: find and remove what uniklab owns that no state row explains.

Ownership is recognisable without the store: QEMU and dnsmasq processes name a path under
this UNIKLAB_HOME on their command line; taps and bridges carry this home's tag in their
names (``ukt<tag>…``, ``ukb<tag>…``); staging and image directories live in its store; on
each Xen host of the inventory, a domain's config file names the home that created it
(``xen.owner_tag``).  A host that does not answer costs a bounded wait and one line of
the report; the rest is swept all the same.  With a damaged state store the rows are
lost: every guest, runtime directory, tap and bridge of this home is then a leftover
(nothing can manage them any more), and the images are kept for ``store rebuild``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from uniklab.backends import process, xen
from uniklab.backends.xen import XenBackend
from uniklab.errors import HostUnreachableError, StoreDamagedError, UniklabError
from uniklab.executor import Executor
from uniklab.hosts.inventory import Host
from uniklab.lab import Lab, nics_of
from uniklab.net import links
from uniklab.net.service import short_hash
from uniklab.state.store import InstanceRow

log = logging.getLogger(__name__)

# Per command on a Xen host (the SSH connect has its own 10 s): a dead host must not hold
# up the sweep.
XEN_HOST_TIMEOUT = 15.0

Connect = Callable[[Host], Executor]


@dataclass(frozen=True)
class Leftover:
    kind: str  # process | rundir | tap | bridge | staging | image | domain | domain-cfg
    name: str
    detail: str
    marker: str = ""  # for processes: what their command line must contain to be ours
    host: str = "local"
    domid: int | None = None  # for domains: the very domain found


@dataclass(frozen=True)
class Sweep:
    items: list[Leftover]
    problems: list[str] = field(default_factory=list)  # hosts not swept, one line each


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


def xen_hosts(lab: Lab) -> list[Host]:
    here = lab.hosts.get("local")
    hosts = [here] if here.hypervisor == "xen" else []
    return hosts + [h for h in lab.hosts.ls() if h.hypervisor == "xen"]


def find(lab: Lab, *, connect: Connect | None = None) -> Sweep:
    """Everything this home owns that no state row explains, here and on its Xen hosts."""
    connect = connect or lab.hosts.executor
    problems: list[str] = []
    try:
        lab.reconcile()
    except HostUnreachableError as exc:
        # Its rows stay as they are; the host's own sweep below reports it.
        log.info("reconcile stopped at a host: %s", exc)
    except StoreDamagedError as exc:
        return without_store(lab, exc)
    except UniklabError as exc:
        problems.append(f"the store could not be reconciled: {exc}")
    owner = xen.owner_tag(lab.paths.run)
    owned: dict[str, list[xen.Owned]] = {}
    for host in xen_hosts(lab):
        try:
            owned[host.name] = XenBackend(connect(host)).owned(owner, timeout=XEN_HOST_TIMEOUT)
        except UniklabError as exc:
            problems.append(f"host {host.name} not swept: {exc}")
    # Read after the hosts' listings: a concurrent `run` reserves its row before it writes
    # its domain's config, so a config seen above always has its row here.
    rows = lab.store.instances()
    found = _local(lab, rows)
    for host_name, items in owned.items():
        found += xen_leftovers(host_name, items, rows)
    return Sweep(found, problems)


def xen_leftovers(
    host: str, owned: Sequence[xen.Owned], rows: Sequence[InstanceRow]
) -> list[Leftover]:
    """The domains and configs of ``owned`` (one host's) that no instance row explains."""
    explained = {
        str(r.runtime.get("domain", r.name)) for r in rows if r.host == host and r.backend == "xen"
    }
    out = []
    for o in owned:
        if o.name in explained:
            continue
        cfg = xen.cfg_path(o.name)
        if o.domid is not None:
            detail = f"domain {o.domid} of no instance ({cfg})"
            out.append(Leftover("domain", o.name, detail, host=host, domid=o.domid))
        else:
            out.append(Leftover("domain-cfg", o.name, f"{cfg} of no instance", host=host))
    return out


def without_store(lab: Lab, damage: StoreDamagedError) -> Sweep:
    """This machine's leftovers when the store cannot say what is whose.  Xen hosts are
    not swept: the inventory that names them was in the store."""
    found = _local(lab, [], store_lost=True)
    return Sweep(found, [f"{damage} (gc swept this machine without it; images kept)"])


def _local(lab: Lab, rows: list[InstanceRow], *, store_lost: bool = False) -> list[Leftover]:
    rundirs = {str(r.runtime.get("rundir")) for r in rows}
    nets = [] if store_lost else lab.store.networks()
    net_dirs = {n.rundir for n in nets}
    home = str(lab.paths.home)
    # A virtual Xen host's QEMU (`uniklab lab`, under LabFiles.dir) is its lab's to stop:
    # `lab down` does, even half-booted; killing it here would take a live host away.
    labs = f"{lab.paths.home / 'labs'}/"
    found: list[Leftover] = []
    for pid, cmd in _processes(home + "/"):
        owned = any(d and d + "/" in cmd for d in rundirs | net_dirs) or labs in cmd
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
    if store_lost:
        return found  # no tag is known: every image would look unused
    digests = {i.digest.replace(":", "-") for i in lab.store.images()}
    digests |= {r.digest.replace(":", "-") for r in rows}
    for d in lab.paths.images.iterdir():
        if not d.name.startswith(".") and d.name not in digests:
            found.append(Leftover("image", str(d), "image no tag or instance uses"))
    return found


def remove(
    lab: Lab, items: list[Leftover], *, connect: Connect | None = None
) -> dict[Leftover, str]:
    """Remove what ``find`` found; returns the items that could not go, each with why."""
    connect = connect or lab.hosts.executor
    backends: dict[str, XenBackend] = {}
    failed: dict[Leftover, str] = {}
    for item in items:
        log.info("removing %s %s on %s", item.kind, item.name, item.host)
        try:
            if item.kind == "process":
                process.stop(int(item.name), item.marker, grace=3.0)
            elif item.kind in ("rundir", "staging", "image"):
                shutil.rmtree(item.name, ignore_errors=True)
            elif item.kind in ("tap", "bridge"):
                links.delete_link(item.name)
            elif item.kind in ("domain", "domain-cfg"):
                if item.host not in backends:
                    backends[item.host] = XenBackend(connect(lab.hosts.get(item.host)))
                backends[item.host].remove(
                    xen.Owned(item.name, item.domid), timeout=XEN_HOST_TIMEOUT
                )
        except UniklabError as exc:
            failed[item] = f"{item.kind} {item.name} on {item.host} not removed: {exc}"
    return failed
