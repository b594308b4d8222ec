"""The behaviour every backend owes uniklab, as one suite that each backend's e2e module
runs against its own engine: subclass ``BackendContract`` and give a ``target`` fixture.

What it pins is what the rest of uniklab relies on through the backend protocol: a guest
made, ready, inspected, its console read and destroyed leaves nothing the backend can
still list; a hypervisor process or domain killed behind uniklab's back is seen as crashed;
``gc`` finds what a lost row leaves, and the backend removes it.
"""

from __future__ import annotations

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
