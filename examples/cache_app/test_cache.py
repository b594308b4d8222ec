"""The cache app against a real Redis unikernel: ``pytest examples/cache_app``.

The ``unikernel`` fixture comes from uniklab's pytest plugin (installed with uniklab).
Each test gets a fresh Redis guest, destroyed afterwards; Redis is baked once per session.
"""

from __future__ import annotations

from cache import Cache

from uniklab.testing.pytest_plugin import UnikernelFactory


def test_read_through(unikernel: UnikernelFactory) -> None:
    vm = unikernel("redis", memory="128M")
    cache = Cache(vm.redis())
    calls: list[int] = []
    assert cache.get("user:1", lambda: calls.append(1) or {"name": "ada"}) == {"name": "ada"}
    assert cache.get("user:1", lambda: calls.append(1) or {}) == {"name": "ada"}
    assert calls == [1]
    assert cache.stats() == {"hits": 1, "misses": 1}


def test_ttl_and_invalidate(unikernel: UnikernelFactory) -> None:
    # Redis arguments go after the image's own: here a memory cap with LRU eviction.
    vm = unikernel("redis", memory="128M", args=["--maxmemory", "8mb"])
    r = vm.redis()
    assert r.config_get("maxmemory") == {"maxmemory": str(8 * 1024 * 1024)}
    cache = Cache(r, ttl=30)
    cache.get("k", lambda: 1)
    assert 0 < r.ttl("cache:k") <= 30
    assert cache.invalidate("k") and not cache.invalidate("k")
