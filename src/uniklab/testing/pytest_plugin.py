"""The pytest plugin (entry point ``pytest11: uniklab``): a ``unikernel`` factory fixture.

    def test_cache(unikernel):
        vm = unikernel("redis", memory="128M")
        assert vm.redis().ping()

Each recipe is baked once per session under a tag of its own (a user's ``redis:latest`` is
never repointed; ``unikernel("redis:latest")`` runs exactly that image); instance names are
unique per session and per pytest-xdist worker; every instance carries the session's
labels, and a reaper at session start removes leftovers of sessions that crashed.  Once a
test uses the fixture, SIGTERM and SIGHUP stop the session like Ctrl-C, so its instances are
destroyed on the way out.  A failing test gets its instances' console logs in its report;
``--uniklab-keep`` keeps those instances for debugging.  Tests that use the fixture (or carry
``@pytest.mark.uniklab``) are skipped when no backend can run guests here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import secrets
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Unpack

import pytest

from uniklab import signals
from uniklab.backends import registry
from uniklab.errors import NotFoundError, ProbeTimeoutError, UniklabError, UsageError
from uniklab.testing import session as owner

# The API (QEMU backend, pyroute2, redis) is imported when a test first needs it: this
# module is loaded by every pytest run on a machine where uniklab is installed.
if TYPE_CHECKING:
    from uniklab.api import Client, Instance
    from uniklab.options import RunFields, RunOptions

log = logging.getLogger(__name__)

CONSOLE_LINES = 200


class UnikernelFactory(Protocol):
    """The ``unikernel`` fixture: start an instance, ready, destroyed after the test."""

    def __call__(
        self,
        image: str,
        options: RunOptions | None = None,
        /,
        *,
        boot: bool = False,
        **fields: Unpack[RunFields],
    ) -> Instance:
        """``image`` with a ``RunOptions`` or its fields as keywords (``uniklab.run``'s).
        A clone of its template when the image and options allow it (``clone=True``:
        refused if they do not); ``boot=True``: a guest that really boots."""
        ...


class UniklabSession:
    """Per-session state: the client, the image cache, names, labels, kept instances."""

    def __init__(self, config: pytest.Config) -> None:
        self.backend: str = config.getoption("uniklab_backend")
        self.keep: bool = config.getoption("uniklab_keep")
        # `--uniklab-hosts`: the pool a test's guest is placed in when it names no host.
        self.hosts: str | None = config.getoption("uniklab_hosts")
        home: str | None = config.getoption("uniklab_home")
        self.home = Path(home).expanduser().resolve() if home else None
        self.id = secrets.token_hex(4)
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.reaped: list[str] = []
        self.kept: list[str] = []
        self.live: list[Instance] = []
        self._images: dict[str, str] = {}
        self.hint: str | None = None  # said once, in the summary: how to boot faster
        self._count = 0
        self._client: Client | None = None
        self._signals = contextlib.ExitStack()

    @functools.cached_property
    def unavailable(self) -> str | None:
        """Why no guest can run here (None: one can); asked only once a test wants a guest,
        since answering loads the backend (this plugin loads with every pytest run)."""
        return owner.backend_unavailable(self.backend)

    def handle_signals(self) -> None:
        """From the first test that starts guests on: SIGTERM and SIGHUP (a CI job's timeout)
        end the session like Ctrl-C, through the fixtures' teardown and ``close``."""
        self._signals.enter_context(signals.as_interrupts())

    @property
    def client(self) -> Client:
        if self._client is None:
            from uniklab.api import Client

            self._client = Client(self.home)
        return self._client

    def labels(self, nodeid: str) -> dict[str, str]:
        return {
            **owner.owner_labels(self.id),
            "uniklab.worker": self.worker,
            "uniklab.test": nodeid,
        }

    def image(self, ref: str) -> str:
        """The image for ``ref`` (``session.image_for_tests``): a recipe (a built-in name or
        a .toml path) is baked once per session under a tag of its own; ``NAME:TAG`` is
        that image, as it is."""
        if ref not in self._images:
            if not self._images:
                self.hint = owner.fast_hint(self.backend)
            self._images[ref] = owner.image_for_tests(self.client.lab, ref, self.backend)
        return self._images[ref]

    def new_name(self, image: str) -> str:
        """``<image>-<worker>-<session>-<n>``: unique per session and per xdist worker."""
        self._count += 1
        base = re.sub(r"[^a-z0-9_.-]", "-", image.split(":")[0].lower()).strip("-.")[:24]
        return f"{base or 'uk'}-{self.worker}-{self.id}-{self._count}"

    def reap(self) -> None:
        """Remove what crashed sessions left (only if a store exists: never create one)."""
        from uniklab.paths import default_paths

        home = self.home or default_paths().home
        if not (home / "state.db").exists() or self.unavailable:
            return
        self.reaped = owner.reap(self.client.lab)

    def keep_instance(self, inst: Instance) -> None:
        """Mark a failed test's instance as kept, so no reaper takes it."""
        row = self.client.lab.store.instance(inst.name)
        self.client.lab.store.update(row.id, labels={**row.labels, owner.KEEP: "1"})
        self.kept.append(inst.name)
        self.forget(inst)

    def forget(self, inst: Instance) -> None:
        if inst in self.live:
            self.live.remove(inst)

    def close(self) -> None:
        """Destroy what this session still has (a safety net), then close the store."""
        try:
            for inst in reversed(self.live):
                try:
                    inst.destroy()
                except UniklabError as exc:
                    log.warning("could not destroy %s: %s", inst.name, exc)
            self.live.clear()
            if self._client is not None:
                self._client.close()
                self._client = None
        finally:
            self._signals.close()


SESSION_KEY = pytest.StashKey[UniklabSession]()
INSTANCES_KEY = pytest.StashKey["list[Instance]"]()
REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("uniklab", "uniklab unikernels")
    group.addoption(
        "--uniklab-backend",
        default="qemu",
        help="Hypervisor backend for the unikernel fixture (default: qemu).",
    )
    group.addoption(
        "--uniklab-keep",
        action="store_true",
        default=False,
        help="Keep the instances of failed tests for debugging (destroy them with "
        "'uniklab destroy').",
    )
    group.addoption(
        "--uniklab-hosts",
        default=None,
        metavar="auto|HOST,HOST...",
        help="Place each test's guest on one of these inventory hosts (or 'auto': any), by "
        "free memory and each host's instance limit, unless the test names its host.",
    )
    group.addoption(
        "--uniklab-home",
        default=None,
        help="UNIKLAB_HOME for the session (images, state, runtime directories).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "uniklab: boots unikernels (skipped when no backend can run them here)",
    )
    backend = config.getoption("uniklab_backend")
    if backend not in registry.names():  # whether it can start test guests: when asked
        raise pytest.UsageError(
            f"--uniklab-backend {backend!r}: available: {', '.join(registry.names())}"
        )
    hosts = config.getoption("uniklab_hosts")
    if hosts is not None:
        from uniklab.hosts import placement

        try:  # one host is a pool of one (``a,``): placed, its limit respected
            names = placement.pool(hosts if hosts == placement.AUTO else f"{hosts},")
        except UsageError as exc:
            raise pytest.UsageError(f"--uniklab-hosts: {exc}") from None
        config.option.uniklab_hosts = ",".join(names or ()) + "," if names else placement.AUTO
    config.stash[SESSION_KEY] = UniklabSession(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    us = session.config.stash[SESSION_KEY]
    try:
        us.reap()
    except UniklabError as exc:
        log.warning("uniklab reaper: %s", exc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    us = config.stash[SESSION_KEY]
    for item in items:
        if "unikernel" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.uniklab)
        if item.get_closest_marker("uniklab") and us.unavailable:
            item.add_marker(pytest.mark.skip(reason=f"uniklab: {us.unavailable}"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    item.stash.setdefault(REPORTS_KEY, {})[rep.when] = rep
    if not rep.failed:
        return rep
    exc = call.excinfo.value if call.excinfo else None
    if isinstance(exc, ProbeTimeoutError) and exc.console_tail:
        rep.sections.append(("uniklab console (instance that failed to start)", exc.console_tail))
    for inst in item.stash.get(INSTANCES_KEY, []):
        if inst.destroyed:
            continue
        try:
            text = "\n".join(inst.logs().rstrip().splitlines()[-CONSOLE_LINES:])
        except UniklabError as err:
            text = f"(console not available: {err})"
        rep.sections.append((f"uniklab console {inst.name} ({rep.when})", text))
    return rep


def pytest_sessionfinish(session: pytest.Session) -> None:
    us = session.config.stash.get(SESSION_KEY, None)
    if us is not None:
        us.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    us = terminalreporter.config.stash.get(SESSION_KEY, None)
    if us is None:
        return
    if us.hint:
        terminalreporter.write_line(f"uniklab: {us.hint}")
    if us.reaped:
        terminalreporter.write_line(
            f"uniklab: reaped {len(us.reaped)} leftover instance(s) of crashed sessions: "
            + ", ".join(us.reaped)
        )
    if us.kept:
        home = f"UNIKLAB_HOME={us.home} " if us.home else ""
        terminalreporter.write_line(
            f"uniklab: kept {len(us.kept)} instance(s) of failed tests: {', '.join(us.kept)}"
            f" (inspect: {home}uniklab logs NAME; remove: {home}uniklab destroy NAME)"
        )


@pytest.fixture(scope="session")
def uniklab_session(pytestconfig: pytest.Config) -> UniklabSession:
    """The session's uniklab state (``.client``, ``.id``, ``.worker``, ``.home``)."""
    us = pytestconfig.stash[SESSION_KEY]
    if us.unavailable:
        pytest.skip(f"uniklab: {us.unavailable}")
    us.handle_signals()
    return us


@pytest.fixture
def unikernel(
    request: pytest.FixtureRequest, uniklab_session: UniklabSession
) -> Iterator[UnikernelFactory]:
    """Start unikernels for one test: ``vm = unikernel("redis", memory="128M")``.

    Each is ready (its probe passed) when returned and destroyed after the test (kept if
    the test failed and ``--uniklab-keep`` is given).  Each is a clone of its image and
    options' template when they allow it (the first one makes the template), so it is
    ready without booting; ``unikernel("redis", boot=True)`` for a test that must see a
    real boot.
    """
    us = uniklab_session
    instances: list[Instance] = []
    request.node.stash[INSTANCES_KEY] = instances

    def start(
        image: str,
        options: RunOptions | None = None,
        /,
        *,
        boot: bool = False,
        **fields: Unpack[RunFields],
    ) -> Instance:
        from uniklab.options import RunOptions

        if options is not None and fields:
            raise UsageError("give a RunOptions or keyword options, not both")
        if boot and (fields.get("clone") or (options is not None and options.clone)):
            raise UsageError("boot=True and clone=True: choose one")
        if options is None and "clone" not in fields:
            fields["clone"] = False if boot else None  # a clone when it can be
        opts = options if options is not None else RunOptions(**fields)
        if boot:
            opts = dataclasses.replace(opts, clone=False)
        ref = us.image(image)
        named = "host" in fields or (options is not None and options.host != "local")
        opts = dataclasses.replace(
            opts,
            host=opts.host if named or us.hosts is None else us.hosts,
            name=opts.name or us.new_name(ref),
            labels={**(opts.labels or {}), **us.labels(request.node.nodeid)},
        )
        inst = us.client.run(ref, opts)
        instances.append(inst)
        us.live.append(inst)
        return inst

    yield start

    reports = request.node.stash.get(REPORTS_KEY, {})
    failed = any(r.failed for r in reports.values())
    _finish(us, instances, keep=us.keep and failed)


def _finish(us: UniklabSession, instances: list[Instance], *, keep: bool) -> None:
    errors: list[str] = []
    for inst in reversed(instances):
        act: Callable[[Instance], None] = us.keep_instance if keep else type(inst).destroy
        try:
            act(inst)
        except NotFoundError:
            pass
        except UniklabError as exc:
            errors.append(f"{inst.name}: {exc}")
        finally:
            us.forget(inst)
    if errors:
        raise UniklabError("could not clean up: " + "; ".join(errors))
