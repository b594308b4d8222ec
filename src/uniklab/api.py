"""The Python API: the CLI's verbs as typed functions, and ``Instance``, a friendly model.

Two layers, after docker-py: ``Client`` holds one ``Lab`` (one state store) and offers the
verbs; ``Instance`` wraps one running guest.  The module-level functions use a client of
the default ``UNIKLAB_HOME``::

    import uniklab
    with uniklab.run("redis", memory="128M") as vm:
        vm.redis().set("k", "v")
    # destroyed here, even on error, Ctrl-C, SIGTERM or SIGHUP

``run`` cleans up whatever it started when it fails (like testcontainers' ``__enter__``);
``Instance.destroy`` is safe to call twice.  While ``run`` waits and inside ``with``, SIGTERM
and SIGHUP left to their default action stop the program like Ctrl-C (``uniklab.signals``),
so the guest is destroyed instead of outliving a killed program.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import redis
from typing_extensions import Unpack

from uniklab import events as _events
from uniklab import signals, validate
from uniklab.bake.image import Manifest
from uniklab.errors import NotFoundError, UniklabError, UsageError
from uniklab.events import Event
from uniklab.lab import InstanceView, Lab
from uniklab.net import netns as _netns
from uniklab.options import NetArg, RunFields, RunOptions, nic_requests
from uniklab.paths import Paths, default_paths
from uniklab.reach import Reach
from uniklab.stats import Sampler, Stats

log = logging.getLogger(__name__)


@functools.cache
def _say_once(line: str) -> None:
    log.warning("%s", line)


@dataclass(frozen=True)
class Image:
    """A baked image, as ``uniklab images`` lists it."""

    name: str
    tag: str
    digest: str
    kind: str
    size: int
    created: float
    ports: tuple[int, ...]
    memory: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @classmethod
    def from_manifest(cls, m: Manifest) -> Image:
        return cls(m.name, m.tag, m.digest, m.kind, m.size, m.created, tuple(m.ports), m.memory)


class Instance:
    """One instance: where it is, its console, its numbers, a Redis client; destroy.

    Also a context manager that destroys the instance on exit, whatever the exit.
    """

    def __init__(self, client: Client, view: InstanceView) -> None:
        self._client = client
        self._view = view
        self._destroyed = False
        self._signals = contextlib.ExitStack()

    # -- identity -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._view.name

    @property
    def id(self) -> int:
        return self._view.row.id

    @property
    def image(self) -> str:
        return self._view.row.image

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._view.row.labels)

    @property
    def pid(self) -> int | None:
        """The hypervisor's process id."""
        return self._view.row.pid

    @property
    def clone_of(self) -> str | None:
        """The key of the template this instance is a clone of; None if it booted."""
        return self._view.clone_of

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    def __repr__(self) -> str:
        return f"<Instance {self.name} {self.image} {self._view.state}>"

    # -- where ----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The guest's address as this machine knows it: 127.0.0.1 for user-mode
        networking, its address on its bridge otherwise (for a guest on a remote host's
        bridge, connect through ``endpoint``)."""
        return self._client.lab.ip(self.name).host

    @property
    def netns(self) -> str | None:
        """The network namespace the address is reachable from (None: this one)."""
        return Reach.netns(self._view.row)

    def port(self, guest_port: int) -> int:
        """The port to connect to for the guest's ``guest_port`` (a forward, a tunnel's
        end, or the port itself)."""
        return self.endpoint(guest_port)[1]

    def endpoint(self, guest_port: int) -> tuple[str, int]:
        """``(host, port)`` to reach the guest's ``guest_port`` from this machine."""
        validate.port(guest_port, "guest port")
        view = self.reload()
        ep = self._client.lab.endpoint(view, guest_port)
        if ep.path is not None:
            raise NotFoundError(
                f"{self.name} has no NIC: reach port {guest_port} over its channel "
                "(channel(), channel_path(), redis(via='channel'))"
            )
        if ep.port is None:
            published = ", ".join(str(g) for _h, g in view.forwards) or "none"
            raise NotFoundError(
                f"{self.name} does not publish port {guest_port} (published: {published})"
            )
        return ep.host, ep.port

    @property
    def has_nic(self) -> bool:
        """False for an instance run with ``net="none"`` (reached over its channels)."""
        return bool(self._view.row.attachments)

    @property
    def channels(self) -> list[int]:
        """The guest ports it serves over channels (``channel_path`` of each)."""
        return [c.port for c in Lab.channels_of(self._view.row) if c.dir == "in"]

    def channel_path(self, guest_port: int) -> Path:
        """The host's UNIX socket of the instance's channel to ``guest_port`` (``--channel``;
        see ``uniklab.channels``): any number of clients, each a connection in the guest."""
        return self._client.lab.channel(self.name, guest_port)

    def channel(self, guest_port: int, *, timeout: float = 10.0) -> socket.socket:
        """A stream socket connected over the channel to ``127.0.0.1:guest_port`` in the
        guest (``timeout``: for the connect and as the socket's timeout)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(str(self.channel_path(guest_port)))
        except BaseException:
            s.close()
            raise
        return s

    # -- clients --------------------------------------------------------------------------
    def redis(
        self,
        port: int = 6379,
        *,
        via: Literal["auto", "network", "channel"] = "auto",
        **kwargs: Any,
    ) -> redis.Redis:
        """A redis-py client bound to the instance.

        ``via``: "network" (its forwarded port or address), "channel" (its channel's UNIX
        socket), "auto": the channel when the instance has no NIC, else the network.  For
        an instance in another network namespace its connections are created inside that
        namespace (a socket belongs to the namespace it was made in).  It speaks RESP2
        unless told otherwise: redis-py >= 8 opens with HELLO (RESP3), which a Redis
        before 6 (the rumprun image's 3.0.6) refuses.
        """
        if via not in ("auto", "network", "channel"):
            raise UsageError(f"invalid via {via!r}: auto, network or channel")
        kwargs.setdefault("protocol", 2)
        kwargs.setdefault("socket_timeout", 10)
        kwargs.setdefault("socket_connect_timeout", 10)
        if via == "channel" or (via == "auto" and not self.has_nic):
            return redis.Redis(unix_socket_path=str(self.channel_path(port)), **kwargs)
        host, hport = self.endpoint(port)
        ns = self.netns
        if ns is None:
            return redis.Redis(host=host, port=hport, **kwargs)
        conn_class = type("NetnsConnection", (_NetnsConnection,), {"netns": ns})
        pool = redis.ConnectionPool(connection_class=conn_class, host=host, port=hport, **kwargs)
        return redis.Redis(connection_pool=pool)

    # -- state ----------------------------------------------------------------------------
    def reload(self) -> InstanceView:
        """Refresh from the store (reconciled with the backend)."""
        self._alive_or_raise()
        self._view = self._client.lab.get(self.name)
        return self._view

    @overload
    def logs(self, *, follow: Literal[False] = False, tail: int | None = None) -> str: ...

    @overload
    def logs(
        self, *, follow: Literal[True], tail: int | None = None
    ) -> Generator[str, None, None]: ...

    def logs(
        self, *, follow: bool = False, tail: int | None = None
    ) -> str | Generator[str, None, None]:
        """The guest's console so far (``tail``: its last N lines).  With ``follow``, its
        lines (without their ends) from there on, each as it comes, until the guest is
        gone or the iterator is closed::

            for line in vm.logs(follow=True, tail=0):
                if "Ready to accept" in line:
                    break
        """
        from uniklab import consoles

        self._alive_or_raise()
        if follow:
            return consoles.lines_of(self._client.lab.follow(self.name, lines=tail))
        return consoles.last_lines(self._client.lab.logs(self.name), tail)

    def stats(self, interval: float | None = None) -> Stats:
        """The instance's figures now (network bytes included where the backend counts
        them); with ``interval`` (seconds) it looks twice, that far apart, for CPU%."""
        self._alive_or_raise()
        if interval is None:
            return Sampler(self._client.lab, [self.name]).sample()[0]
        return next(Sampler(self._client.lab, [self.name]).stream(interval))[0]

    @property
    def state(self) -> str:
        return "destroyed" if self._destroyed else self.reload().state

    def check(self, timeout: float = 5.0) -> str:
        """Run the image's probe once; return its detail or raise ProbeTimeoutError."""
        self._alive_or_raise()
        return self._client.lab.check(self.name, timeout=timeout).detail

    def as_dict(self) -> dict[str, object]:
        return self.reload().as_dict()

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop (``docker stop -t``): the app gets SIGTERM and ``timeout`` seconds
        before SIGKILL, then the guest powers off.  The instance stays, ``stopped``, for
        ``start``.  Returns the app's exit status when the guest told it."""
        self._alive_or_raise()
        self._view = self._client.lab.stop(self.name, timeout=timeout)
        status = self._view.row.runtime.get("exit_status")
        return status if isinstance(status, int) else None

    def start(self, timeout: float | None = None) -> None:
        """Start a stopped (or exited) instance again: same name, MAC and ports where
        still free; returns once its probe answers (``timeout`` seconds at most)."""
        self._alive_or_raise()
        self._view = self._client.lab.start(self.name, timeout=timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """``stop`` (with ``timeout``) if running or paused, then ``start``."""
        self._alive_or_raise()
        self._view = self._client.lab.restart(self.name, timeout=timeout)

    def pause(self) -> None:
        """Freeze the guest's vCPUs (``docker pause``); ``resume`` thaws them."""
        self._alive_or_raise()
        self._view = self._client.lab.pause(self.name)

    def resume(self) -> None:
        self._alive_or_raise()
        self._view = self._client.lab.resume(self.name)

    def _alive_or_raise(self) -> None:
        if self._destroyed:
            raise NotFoundError(f"instance {self.name} was destroyed")

    # -- end --------------------------------------------------------------------------------
    def destroy(self) -> None:
        """Stop the guest and remove everything it had.  Safe to call twice.

        Ctrl-C, SIGTERM or SIGHUP during the teardown is held until it is done, then delivered.
        """
        if self._destroyed:
            return
        with signals.deferred():
            try:
                self._client.lab.destroy(self.name)
            except NotFoundError:
                pass  # already gone (destroyed elsewhere, or reaped)
            finally:
                self._destroyed = True

    def __enter__(self) -> Instance:
        # Killed inside the block, the program still leaves through __exit__.
        self._signals.enter_context(signals.as_interrupts())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.destroy()
        finally:
            self._signals.close()


class _NetnsConnection(redis.Connection):
    netns: str | None = None

    def _connect(self) -> Any:
        with _netns.inside(self.netns):
            return super()._connect()  # type: ignore[no-untyped-call]


class Client:
    """The verbs over one state store (``home``: a UNIKLAB_HOME; default: the environment's)."""

    def __init__(self, home: str | Path | None = None) -> None:
        paths = Paths(Path(home).expanduser().resolve()) if home else default_paths()
        self.lab = Lab(paths)

    @property
    def home(self) -> Path:
        return self.lab.paths.home

    def close(self) -> None:
        self.lab.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bake(self, recipe: str, *, tag: str = "latest") -> Image:
        """Bake a built-in recipe (by name) or a recipe file (by path); cached by content."""
        return Image.from_manifest(self.lab.bake(recipe, tag=tag).manifest)

    def images(self) -> list[Image]:
        return [Image.from_manifest(m) for m in self.lab.list_images()]

    def image(self, ref: str) -> Image:
        return Image.from_manifest(self.lab.image(ref))

    def run(
        self, image: str, options: RunOptions | None = None, /, **fields: Unpack[RunFields]
    ) -> Instance:
        """Start an instance of ``image`` (baking a built-in recipe if needed); by default
        wait until the image's probe passes.  Whatever it started is removed if it fails.
        Options are a ``RunOptions`` or its fields as keywords (``memory="128M"``)."""
        opts = options if options is not None else RunOptions(**fields)
        if options is not None and fields:
            raise UsageError("give a RunOptions or keyword options, not both")
        # Lab.run removes what it made if it fails, KeyboardInterrupt included; SIGTERM and
        # SIGHUP become one while it waits.
        with signals.as_interrupts():
            view = self.lab.run(self._recipe_image(image, opts), opts)
        try:
            return Instance(self, view)
        except BaseException:
            with signals.deferred():
                self.lab.destroy(view.name)
            raise

    def _recipe_image(self, image: str, opts: RunOptions) -> str:
        """``run("redis")`` with no ``redis:latest`` baked: the recipe baked as the test
        faces bake it (on QEMU with the fast kernel when this machine has it built), under
        a tag of its own; ``redis:latest`` stays the user's to bake."""
        from uniklab.backends import registry
        from uniklab.bake import kernel_choice, recipe

        if ":" in image or image not in recipe.builtin_names() or opts.host == "auto":
            return image
        try:
            return self.lab.image(f"{image}:latest").ref
        except NotFoundError:
            pass
        fast = registry.for_host(self.lab.hosts.get(opts.host)).name == "qemu"
        if fast and kernel_choice.fast_default() is None:
            _say_once(kernel_choice.FAST_HINT)
        return self.lab.bake_for_tests(image, fast=fast).ref

    def get(self, name: str) -> Instance:
        return Instance(self, self.lab.get(name))

    def ps(self, *, all: bool = True, labels: Mapping[str, str] | None = None) -> list[Instance]:
        """Instances (``all=False``: running ones only), optionally those with ``labels``."""
        return [Instance(self, v) for v in self.lab.ps(all=all, labels=labels)]

    def destroy(self, name: str) -> None:
        self.lab.destroy(name)

    def stats(
        self, names: Sequence[str] = (), *, interval: float = 1.0
    ) -> Generator[list[Stats], None, None]:
        """Figures of ``names`` (none: every live instance) every ``interval`` seconds, with
        CPU% over that interval, until the caller stops iterating (``uniklab stats``)."""
        return Sampler(self.lab, names).stream(interval)

    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        follow: bool = False,
        kinds: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> Generator[Event, None, None]:
        """This home's events (created, ready, exited, crashed, restarted, destroyed, ...),
        oldest first; with ``follow`` it waits for new ones (from now, unless ``since``)
        until ``until`` or until the caller stops iterating (``uniklab events``)."""
        return _events.read(
            self.lab.paths, since=since, until=until, follow=follow, kinds=kinds, names=names
        )


class _OwnedInstance(Instance):
    """An instance from a module-level ``run``: its client closes when it is destroyed."""

    def destroy(self) -> None:
        try:
            super().destroy()
        finally:
            self._client.close()


def bake(recipe: str, *, tag: str = "latest", home: str | Path | None = None) -> Image:
    """Bake ``recipe`` (a built-in name or a recipe file) into an image; see ``Client.bake``."""
    with Client(home) as c:
        return c.bake(recipe, tag=tag)


def images(*, home: str | Path | None = None) -> list[Image]:
    """The baked images."""
    with Client(home) as c:
        return c.images()


def ps(
    *, all: bool = True, labels: Mapping[str, str] | None = None, home: str | Path | None = None
) -> list[Instance]:
    """Instances (``all=False``: running ones only), optionally those with ``labels``.

    They share one client, whose store connection closes when the last is dropped.
    """
    return Client(home).ps(all=all, labels=labels)


def events(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    follow: bool = False,
    kinds: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    home: str | Path | None = None,
) -> Generator[Event, None, None]:
    """The events of a home (default: ``UNIKLAB_HOME``); see ``Client.events``.  Reading
    them needs no state store."""
    paths = Paths(Path(home).expanduser().resolve()) if home else default_paths()
    return _events.read(paths, since=since, until=until, follow=follow, kinds=kinds, names=names)


def destroy(name: str, *, home: str | Path | None = None) -> None:
    """Destroy an instance by name: process, runtime files and state row."""
    with Client(home) as c:
        c.destroy(name)


def run(
    image: str,
    options: RunOptions | None = None,
    /,
    *,
    home: str | Path | None = None,
    **fields: Unpack[RunFields],
) -> Instance:
    """Run ``image`` and return a ready ``Instance``; use it in ``with`` to destroy it.

    The options (a ``RunOptions``, or its fields as keywords): ``memory`` "128M", "1G" or
    MB; ``publish`` (host, guest) port pairs on 127.0.0.1 (default: every port of the image
    on a free port); ``net`` NICs on networks instead of user-mode networking; ``args``
    appended to the app's command line; ``host`` an inventory host, "auto" or a pool
    "a,b" (placed by free memory and each host's instance limit);
    ``restart`` "on-failure".
    """
    client = Client(home)
    try:
        inst = client.run(image, options, **fields)
    except BaseException:
        client.close()
        raise
    return _OwnedInstance(client, inst._view)


__all__ = [
    "Client",
    "Event",
    "Image",
    "Instance",
    "NetArg",
    "RunFields",
    "RunOptions",
    "Stats",
    "UniklabError",
    "bake",
    "destroy",
    "events",
    "images",
    "nic_requests",
    "ps",
    "run",
]
