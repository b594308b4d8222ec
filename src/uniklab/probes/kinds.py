"""The probes: TCP connect, Redis PING + SET/GET, HTTP status, memcached set/get, console."""

from __future__ import annotations

import re
import secrets
import socket
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import redis

from uniklab.bake.recipe import ProbeSpec
from uniklab.guest import console as guest_console
from uniklab.probes.base import Endpoint, Probe


def _need_port(endpoint: Endpoint) -> int:
    if endpoint.port is None:
        raise ValueError("no port to probe")
    return endpoint.port


@dataclass(frozen=True)
class TcpProbe:
    name: str = "tcp"

    def attempt(self, endpoint: Endpoint, timeout: float) -> str:
        with endpoint.connect(timeout) as s:
            # QEMU's user-mode forwarder (and a channel) accepts on the host before the
            # guest listens, then closes when the guest refuses: an immediate EOF means
            # "not yet".
            s.settimeout(0.3)
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionError("connection closed at once (nothing listening yet)")
            except TimeoutError:
                pass
            return f"connected to {endpoint}"


@dataclass(frozen=True)
class RedisProbe:
    """PING, then a SET/GET round trip of a random key (deleted afterwards).  In RESP2:
    redis-py >= 8 otherwise opens with HELLO, which Redis before 6 does not know."""

    name: str = "redis"

    def attempt(self, endpoint: Endpoint, timeout: float) -> str:
        where: dict[str, object] = (
            {"unix_socket_path": endpoint.path}
            if endpoint.path
            else {"host": endpoint.host, "port": _need_port(endpoint)}
        )
        client = redis.Redis(
            **where,  # type: ignore[arg-type]
            protocol=2,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        try:
            if client.ping() is not True:
                raise ValueError("PING did not answer PONG")
            key, value = f"uniklab:probe:{secrets.token_hex(4)}", secrets.token_hex(8)
            try:
                client.set(key, value, ex=60)
            except redis.ReadOnlyError:
                # A replica (--replicaof) answers but refuses writes: it is serving.
                return "PONG (read-only replica)"
            got = client.get(key)
            client.delete(key)
            if got != value.encode():
                raise ValueError(f"GET returned {got!r}, expected {value!r}")
            return "PONG, SET/GET ok"
        finally:
            client.close()


@dataclass(frozen=True)
class HttpProbe:
    path: str = "/"
    status: int = 200
    name: str = "http"

    def attempt(self, endpoint: Endpoint, timeout: float) -> str:
        if endpoint.path:
            raise ValueError("the http probe does not go over a channel (use a tcp probe)")
        url = f"http://{endpoint.host}:{_need_port(endpoint)}{self.path}"
        req = urllib.request.Request(url, headers={"User-Agent": "uniklab-probe"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                code = resp.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        if code != self.status:
            raise ValueError(f"GET {self.path} returned {code}, expected {self.status}")
        return f"GET {self.path} -> {code}"


@dataclass(frozen=True)
class MemcachedProbe:
    name: str = "memcached"

    def attempt(self, endpoint: Endpoint, timeout: float) -> str:
        key, value = f"uniklab-{secrets.token_hex(4)}", secrets.token_hex(8)
        with endpoint.connect(timeout) as s:
            f = s.makefile("rwb")
            f.write(f"set {key} 0 60 {len(value)}\r\n{value}\r\n".encode())
            f.flush()
            if f.readline().strip() != b"STORED":
                raise ValueError("set was not STORED")
            f.write(f"get {key}\r\n".encode())
            f.flush()
            header, data, end = f.readline(), f.readline(), f.readline()
            if (
                not header.startswith(b"VALUE")
                or data.strip() != value.encode()
                or end.strip() != b"END"
            ):
                raise ValueError("get did not return the value set")
            f.write(f"delete {key}\r\n".encode())
            f.flush()
            f.readline()
        return "set/get ok"


@dataclass(frozen=True)
class ConsoleProbe:
    """Ready when the console log matches a regular expression."""

    pattern: str
    read: Callable[[], str]
    name: str = "console"

    def attempt(self, endpoint: Endpoint, timeout: float) -> str:
        m = re.search(self.pattern, self.read(), re.MULTILINE)
        if not m:
            raise ValueError(f"console has no line matching {self.pattern!r} yet")
        return f"console: {m.group(0)[:80]}"


def from_spec(spec: ProbeSpec, console: Callable[[], str]) -> Probe:
    if spec.kind == "redis":
        return RedisProbe()
    if spec.kind == "http":
        return HttpProbe(path=spec.path, status=spec.status)
    if spec.kind == "memcached":
        return MemcachedProbe()
    if spec.kind == "console":
        return ConsoleProbe(pattern=spec.marker or re.escape(guest_console.EXEC), read=console)
    return TcpProbe()
