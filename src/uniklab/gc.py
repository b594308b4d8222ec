"""`uniklab gc`: find and remove what uniklab owns that no state row explains.

Ownership is recognisable without the store: QEMU and dnsmasq processes name a path under
this UNIKLAB_HOME on their command line; taps and bridges carry this home's tag in their
names (``ukt<tag>…``, ``ukb<tag>…``); staging and image directories live in its store; on
each Xen host of the inventory, a domain's config file names the home that created it
(``base.owner_tag``).  A host that does not answer costs a bounded wait and one line of
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

from uniklab import channels, daemons, templates
from uniklab.backends import registry
from uniklab.backends.base import Backend, Owned
from uniklab.errors import HostUnreachableError, StoreDamagedError, UniklabError
from uniklab.executor import Executor
from uniklab.hosts.inventory import Host
from uniklab.lab import Lab
from uniklab.net import links
from uniklab.net.service import short_hash
from uniklab.state.store import CRASHED, EXITED, STOPPED, InstanceRow

log = logging.getLogger(__name__)

# Per command on a host.  A dead host costs only the SSH connect's own 10 s; this bounds a
# host that answers slowly, and must not be short: a host reported "not swept" has its
# leftovers unseen, and a dom0 busy booting domUs under TCG answers slowly.
HOST_TIMEOUT = 45.0

Connect = Callable[[Host], Executor]


@dataclass(frozen=True)
class Leftover:
    kind: str  # process | rundir | socket | tap | bridge | staging | image | template | domain
    # | domain-cfg
    name: str
    detail: str
    marker: str = ""  # for processes: what their command line must contain to be ours
    host: str = "local"
    domid: int | None = None  # for domains: the very domain found
    backend: str | None = None  # a backend's leftover: that backend removes it
    owned: Owned | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "detail": self.detail,
            "marker": self.marker,
            "host": self.host,
            "domid": self.domid,
            "backend": self.backend,
        }


@dataclass(frozen=True)
class Sweep:
    items: list[Leftover]
    problems: list[str] = field(default_factory=list)  # hosts not swept, one line each


def _swept(lab: Lab, rows: Sequence[InstanceRow]) -> list[tuple[Host, str]]:
    """Each host with the backends to ask there: its own, and any an instance row names."""
    hosts = {"local": lab.hosts.get("local")} | {h.name: h for h in lab.hosts.ls()}
    pairs = {(name, registry.for_host(h).name) for name, h in hosts.items()}
    pairs |= {(r.host, r.backend) for r in rows if r.host in hosts}
    out = []
    for name, backend in sorted(pairs):
        if registry.get(backend).local_only and not hosts[name].is_local:
            continue  # nothing of that engine runs there
        out.append((hosts[name], backend))
    return out


def _connect(lab: Lab, host: Host, backend: str, connect: Connect) -> Backend:
    ctx = registry.BackendContext(host=host, executor=connect(host), cache=lab.paths.cache)
    return registry.create(backend, ctx)


def find(lab: Lab, *, connect: Connect | None = None) -> Sweep:
    """Everything this home owns that no state row explains, here and on its hosts."""
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
    owned: list[tuple[str, str, Backend, list[Owned]]] = []
    for host, name in _swept(lab, lab.store.instances()):
        try:
            backend = _connect(lab, host, name, connect)
            items = backend.owned(lab.paths.run, timeout=HOST_TIMEOUT)
            owned.append((host.name, name, backend, items))
        except UniklabError as exc:
            problems.append(f"host {host.name} not swept: {exc}")
    # Read after the hosts' listings: a concurrent `run` reserves its row (and records
    # what it will make) before it makes anything, so what was seen above has its row here.
    rows = lab.store.instances()
    found = _local(lab, rows)
    for host_name, name, backend, items in owned:
        found += backend_leftovers(host_name, name, backend, items, rows)
    return Sweep(found, problems)


def backend_leftovers(
    host: str, name: str, backend: Backend, owned: Sequence[Owned], rows: Sequence[InstanceRow]
) -> list[Leftover]:
    """What ``backend`` made on ``host`` (``owned``) that no instance row explains."""
    explained = {backend.key(Lab.handle(r)) for r in rows if r.host == host and r.backend == name}
    return [
        Leftover(
            o.kind,
            o.name,
            o.detail,
            marker=o.key + "/" if o.kind == "process" else "",
            host=host,
            domid=o.ident if o.kind == "domain" else None,
            backend=name,
            owned=o,
        )
        for o in owned
        if o.key not in explained
    ]


def _local_owned(lab: Lab) -> list[Leftover]:
    """With no rows, everything this machine's backend runs for this home is a leftover."""
    host = lab.hosts.get("local")
    name = registry.for_host(host).name
    backend = _connect(lab, host, name, lab.hosts.executor)
    return backend_leftovers("local", name, backend, backend.owned(lab.paths.run), [])


def without_store(lab: Lab, damage: StoreDamagedError) -> Sweep:
    """This machine's leftovers when the store cannot say what is whose.  Xen hosts are
    not swept: the inventory that names them was in the store."""
    found = _local_owned(lab) + _local(lab, [], store_lost=True)
    return Sweep(found, [f"{damage} (gc swept this machine without it; images kept)"])


def _local(lab: Lab, rows: list[InstanceRow], *, store_lost: bool = False) -> list[Leftover]:
    rundirs = {str(r.runtime.get("rundir")) for r in rows}
    nets = [] if store_lost else lab.store.networks()
    net_dirs = {n.rundir for n in nets}
    home = str(lab.paths.home)
    found: list[Leftover] = []
    # The networks' daemons (guests' hypervisor processes are their backends' to find).
    for pid, cmd in daemons.scan("dnsmasq", home + "/"):
        if not any(d and d + "/" in cmd for d in net_dirs):
            found.append(Leftover("process", str(pid), cmd[:120], marker=home + "/"))
    for d in sorted(lab.paths.run.iterdir()) if lab.paths.run.exists() else []:
        if str(d) not in rundirs:
            found.append(Leftover("rundir", str(d), "runtime directory of no instance"))
    found += _channel_leftovers(rows)
    tag = short_hash(str(lab.networks.rundir))
    taps = {n.tap for r in rows for n in r.attachments if n.tap}
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
    kept = {d.name for d in lab.paths.images.iterdir() if d.name in digests}
    for kind, path, why in templates.leftovers(lab.paths, kept):
        found.append(Leftover(kind, str(path), why))
    return found


def _channel_leftovers(rows: Sequence[InstanceRow]) -> list[Leftover]:
    """Channel proxies of instances that no longer run (their backend stops them), and
    channel sockets whose proxy is gone (a client would connect to nothing)."""
    found: list[Leftover] = []
    for r in rows:
        if not r.runtime.get("rundir"):
            continue
        rundir = Path(str(r.runtime["rundir"]))
        pid = daemons.find(channels.pid_path(rundir), str(channels.config_path(rundir)))
        if pid is not None and r.state in (STOPPED, EXITED, CRASHED):
            found.append(
                Leftover(
                    "process",
                    str(pid),
                    f"channel proxy of {r.name}, which is {r.state}",
                    marker=str(channels.config_path(rundir)),
                )
            )
        if pid is None:
            for sock in sorted(rundir.glob("chan-*.sock")):
                found.append(Leftover("socket", str(sock), f"channel of {r.name} with no proxy"))
    return found


def remove(
    lab: Lab, items: list[Leftover], *, connect: Connect | None = None
) -> dict[Leftover, str]:
    """Remove what ``find`` found; returns the items that could not go, each with why."""
    connect = connect or lab.hosts.executor
    backends: dict[tuple[str, str], Backend] = {}
    failed: dict[Leftover, str] = {}
    for item in items:
        log.info("removing %s %s on %s", item.kind, item.name, item.host)
        try:
            if item.backend and item.owned:
                key = (item.host, item.backend)
                if key not in backends:
                    host = lab.hosts.get(item.host)
                    backends[key] = _connect(lab, host, item.backend, connect)
                backends[key].remove(item.owned, timeout=HOST_TIMEOUT)
            elif item.kind == "process":
                daemons.stop(int(item.name), item.marker, grace=3.0)
            elif item.kind == "staging" and templates.root(lab.paths) in Path(item.name).parents:
                templates.sweep_build(Path(item.name))
            elif item.kind == "template":
                templates.remove_dir(lab, Path(item.name))
            elif item.kind in ("rundir", "staging", "image"):
                shutil.rmtree(item.name, ignore_errors=True)
            elif item.kind == "socket":
                Path(item.name).unlink(missing_ok=True)
            elif item.kind in ("tap", "bridge"):
                links.delete_link(item.name)
        except UniklabError as exc:
            failed[item] = f"{item.kind} {item.name} on {item.host} not removed: {exc}"
    return failed
