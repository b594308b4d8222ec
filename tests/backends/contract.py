"""The behaviour every backend owes uniklab, as one suite that each backend's e2e module
runs against its own engine: subclass ``BackendContract`` and give a ``target`` fixture.

What it pins is what the rest of uniklab relies on through the backend protocol: a guest
made, ready, inspected, its console read and destroyed leaves nothing the backend can
still list; a hypervisor process or domain killed behind uniklab's back is seen as crashed;
``gc`` finds what a lost row leaves, and the backend removes it; a paused guest shows
paused; a graceful stop tells the app (its exit status comes back) and leaves what starts
the same guest again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from uniklab import gc
from uniklab.backends.base import Backend
from uniklab.lab import Lab, RunOptions
from uniklab.state.store import InstanceRow


@dataclass(frozen=True)
class Target:
    lab: Lab
    options: RunOptions  # how a guest of this backend is run (host, networks, memory)
    kill: Callable[[Lab, InstanceRow], None]  # the hypervisor's own hard kill, behind our back
    image: str = "redis"


def _keys(backend: Backend, lab: Lab) -> list[str]:
    return [o.key for o in backend.owned(lab.paths.run)]


class BackendContract:
    def test_lifecycle_leaves_nothing(self, target: Target) -> None:
        lab = target.lab
        view = lab.run(target.image, replace(target.options, name="contract-a", wait=True))
        backend = lab.backend_of(view.row)
        handle = lab.handle(view.row)
        insp = backend.inspect(handle)
        assert insp.alive and insp.state == "running", insp
        assert "uniklab-init: exec" in backend.console(handle)
        assert lab.check("contract-a").ok
        assert backend.key(handle) in _keys(backend, lab)
        assert backend.facts().free_memory_mb > 0
        lab.destroy("contract-a")
        assert backend.key(handle) not in _keys(backend, lab)
        assert not backend.inspect(handle).alive
        assert lab.store.instances() == []

    def test_a_killed_guest_is_crashed(self, target: Target) -> None:
        lab = target.lab
        view = lab.run(target.image, replace(target.options, name="contract-b", wait=True))
        target.kill(lab, view.row)
        [seen] = lab.ps()
        assert seen.state == "crashed", seen.row
        backend = lab.backend_of(view.row)
        lab.destroy("contract-b")
        assert backend.key(lab.handle(view.row)) not in _keys(backend, lab)

    def test_pause_resume_stop_and_start_again(self, target: Target) -> None:
        lab = target.lab
        view = lab.run(target.image, replace(target.options, name="contract-d", wait=True))
        backend = lab.backend_of(view.row)
        handle = lab.handle(view.row)
        backend.pause(handle)
        assert backend.inspect(handle).state == "paused"
        backend.resume(handle)
        assert backend.inspect(handle).state == "running"
        assert lab.check("contract-d").ok
        # Redis ends with status 0 on SIGTERM: the app was told, not killed.
        assert backend.stop(handle, timeout=20) == 0
        assert not backend.inspect(handle).alive
        assert "uniklab-init: app exited status 0" in backend.console(handle)
        assert lab.get("contract-d").state == "exited"
        # What stop leaves is enough to start the same guest again.
        started = lab.start("contract-d")
        assert started.state == "running"
        assert started.row.attachments == view.row.attachments
        assert lab.check("contract-d").ok
        lab.destroy("contract-d")
        assert backend.key(lab.handle(started.row)) not in _keys(backend, lab)

    def test_gc_finds_and_removes_an_orphan(self, target: Target) -> None:
        lab = target.lab
        view = lab.run(target.image, replace(target.options, name="contract-c", wait=True))
        backend = lab.backend_of(view.row)
        key = backend.key(lab.handle(view.row))
        lab.store.delete_instance(view.row.id)  # the row is lost; the guest runs on
        mine = [
            i
            for i in gc.find(lab).items
            if i.backend == backend.name and i.owned is not None and i.owned.key == key
        ]
        assert len(mine) == 1, mine
        assert gc.remove(lab, mine) == {}
        assert key not in _keys(backend, lab)

    def test_inspect_counts_bridged_network_bytes(self, target: Target) -> None:
        """``inspect(net=True)``: a guest on a bridge has byte counters (its DHCP and the
        probe went through them); user-mode networking has none to read."""
        lab = target.lab
        view = lab.run(target.image, replace(target.options, name="contract-n", wait=True))
        insp = lab.backend_of(view.row).inspect(lab.handle(view.row), net=True)
        if any(a.kind != "user" for a in view.row.attachments):
            assert insp.net_rx_bytes and insp.net_tx_bytes, insp
        else:
            assert insp.net_rx_bytes is None and insp.net_tx_bytes is None, insp
        lab.destroy("contract-n")

    def test_follow_reads_the_console_and_ends_with_the_guest(self, target: Target) -> None:
        """``follow``: the console so far, then as it comes; destroyed, the guest's
        stream ends by itself.  ``attach`` says how a terminal joins it."""
        lab = target.lab
        view = lab.run(target.image, replace(target.options, name="contract-f", wait=True))
        backend = lab.backend_of(view.row)
        handle = lab.handle(view.row)
        access = backend.attach(handle)
        assert access.socket is not None or access.argv
        chunks = backend.follow(handle, lines=None)
        done = threading.Event()
        seen: list[str] = []

        def read() -> None:
            seen.extend(chunks)  # until the stream ends
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while "uniklab-init: exec" not in "".join(seen):
            assert time.monotonic() < deadline, "".join(seen)[-500:]
            time.sleep(0.05)
        lab.destroy("contract-f")
        assert done.wait(60), "the stream outlived its guest"
