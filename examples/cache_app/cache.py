"""A tiny app to test against a Redis unikernel: a read-through cache with hit counters.

python cache.py          # smoke check against $REDIS_ADDR (host:port), prints "ok"
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import redis


class Cache:
    """Read-through cache: ``get(key, compute)`` computes on a miss and stores for ``ttl``."""

    def __init__(self, client: redis.Redis, *, prefix: str = "cache:", ttl: int = 60) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = ttl

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        full = self.prefix + key
        raw = self.r.get(full)
        if raw is not None:
            self.r.hincrby(self.prefix + "stats", "hits", 1)
            return json.loads(raw)
        value = compute()
        self.r.set(full, json.dumps(value), ex=self.ttl)
        self.r.hincrby(self.prefix + "stats", "misses", 1)
        return value

    def invalidate(self, key: str) -> bool:
        return bool(self.r.delete(self.prefix + key))

    def stats(self) -> dict[str, int]:
        raw = self.r.hgetall(self.prefix + "stats")
        return {k.decode(): int(v) for k, v in raw.items()}


def from_env() -> Cache:
    host, _, port = os.environ["REDIS_ADDR"].rpartition(":")
    return Cache(redis.Redis(host=host, port=int(port), socket_timeout=5))


if __name__ == "__main__":
    cache = from_env()
    assert cache.get("answer", lambda: 42) == 42
    assert cache.get("answer", lambda: 0) == 42
    assert cache.stats() == {"hits": 1, "misses": 1}, cache.stats()
    print("ok")
    sys.exit(0)
