"""How this machine reaches a guest: the one place that knows it, per attachment kind.

- ``user``: ports published on 127.0.0.1 (the guest's own address is the backend's
  user-mode one, unreachable from here).
- ``bridge``: the guest's address on a uniklab network (static, or found by MAC in the
  dnsmasq leases or the neighbour table), from inside the network's namespace.
- ``host-bridge``: the guest's address on a bridge of its host (static, or found by MAC in
  that host's leases, libvirt's for a libvirt network, or its neighbour table), through
  the host's executor (an SSH tunnel for a remote host; directly when this machine is the
  host).

Addresses found are kept in the instance's attachment, so they are looked up once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable

from uniklab.errors import NotFoundError
from uniklab.hosts.service import HostService
from uniklab.net import discover, remote
from uniklab.net.attachment import Attachment
from uniklab.probes.base import Endpoint
from uniklab.state.store import InstanceRow, Store


class Reach:
    def __init__(self, store: Store, hosts: HostService, stack: contextlib.ExitStack) -> None:
        self.store = store
        self.hosts = hosts
        self._stack = stack  # open tunnels live as long as it does
        self._tunnels: dict[tuple[str, str, int], tuple[str, int]] = {}

    @staticmethod
    def first(row: InstanceRow) -> Attachment | None:
        return row.attachments[0] if row.attachments else None

    @staticmethod
    def forwards(row: InstanceRow) -> list[tuple[int, int]]:
        """(port on 127.0.0.1, guest port) for each port published from the guest."""
        a = Reach.first(row)
        return [(int(h), int(g)) for h, g in a.forwards] if a and a.kind == "user" else []

    @staticmethod
    def netns(row: InstanceRow) -> str | None:
        """The network namespace a client must be in to reach the guest, if any."""
        a = Reach.first(row)
        return a.netns if a and a.kind == "bridge" else None

    @staticmethod
    def known(row: InstanceRow) -> discover.Found | None:
        """The first bridged NIC's address if it is static or was found already."""
        a = Reach.first(row)
        if a is None or a.kind == "user":
            return None
        if a.static_ip:
            return discover.Found(a.static_ip, "static")
        if a.found:
            return discover.Found(a.found, a.found_by or "")
        return None

    def address(self, row: InstanceRow, *, timeout: float) -> discover.Found | None:
        """The first bridged NIC's address: static, known, or found by MAC now (waiting up
        to ``timeout``; 0 looks once).  None for a user-mode guest or one not found yet."""
        a = self.first(row)
        found = self.known(row)
        if a is None or a.kind == "user" or found is not None:
            return found
        if a.kind == "bridge":
            found = self._on_network(a, timeout)
        else:
            found = self._on_host(row, a, timeout)
        if found:
            cached = dataclasses.replace(a, found=found.ip, found_by=found.source)
            self.store.update(row.id, attachments=[cached, *row.attachments[1:]])
        return found

    def _on_network(self, a: Attachment, timeout: float) -> discover.Found | None:
        assert a.net is not None
        net = self.store.network(a.net)
        if timeout > 0:
            return discover.find(a.mac, net, timeout=timeout)
        return discover.lookup(a.mac, net)

    def _on_host(self, row: InstanceRow, a: Attachment, timeout: float) -> discover.Found | None:
        h = self.hosts.get(row.host)
        ex = self.hosts.executor(h)
        leases = [h.labels["leases"]] if "leases" in h.labels else list(remote.DEFAULT_LEASES)
        look: Callable[[Attachment], discover.Found | None] = functools.partial(
            remote.lookup_nic, ex, leases=leases
        )
        if a.net and h.libvirt:  # a libvirt network there: its leases, through libvirt
            from uniklab.net import libvirt_net

            look = libvirt_net.finder(h, ex)
        deadline = time.monotonic() + timeout
        while True:
            found = look(a)
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if found is None and timeout > 0:
            raise NotFoundError(f"no address for MAC {a.mac} on {row.host}")
        return found

    def on_host(self, host: str, a: Attachment, guest_port: int | None) -> Endpoint:
        """Where a client on this machine connects to ``guest_port`` of a guest with no row
        (a template being built) whose NIC ``a`` is on a bridge of ``host``: its address
        looked up once by MAC there, tunnelled; NotFoundError while it has none."""
        h = self.hosts.get(host)
        ex = self.hosts.executor(h)
        leases = [h.labels["leases"]] if "leases" in h.labels else list(remote.DEFAULT_LEASES)
        found = remote.lookup(ex, a.mac, str(a.bridge), leases)
        if found is None or guest_port is None:
            raise NotFoundError(f"no address for MAC {a.mac} on {host} yet")
        key = (host, found.ip, guest_port)
        if key not in self._tunnels:
            self._tunnels[key] = self._stack.enter_context(ex.forward(found.ip, guest_port))
        return Endpoint(*self._tunnels[key])

    def endpoint(self, row: InstanceRow, guest_port: int | None) -> Endpoint:
        """Where a client on this machine connects to ``guest_port`` of the guest."""
        a = self.first(row)
        if a is None or a.kind == "user":
            for host_port, guest in self.forwards(row):
                if guest_port is None or guest == guest_port:
                    return Endpoint("127.0.0.1", host_port)
            return Endpoint("127.0.0.1", None)
        found = self.address(row, timeout=0)
        if found is None:
            raise NotFoundError(f"{row.name}: address of {a.mac} not known yet")
        if a.kind == "bridge":
            return Endpoint(found.ip, guest_port, a.netns)
        if guest_port is None:
            raise NotFoundError(f"{row.name}: which port? (a guest on {row.host} is tunnelled)")
        key = (row.host, found.ip, guest_port)
        if key not in self._tunnels:
            ex = self.hosts.executor(self.hosts.get(row.host))
            self._tunnels[key] = self._stack.enter_context(ex.forward(found.ip, guest_port))
        return Endpoint(*self._tunnels[key])
