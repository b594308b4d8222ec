"""The core of uniklab: the verbs (bake, run, ps, ip, logs, check, destroy) over the store.

The CLI, the Python API and the pytest plugin are thin faces over ``Lab``.  Every verb
first reconciles the state store with what really runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uniklab import events, faults, signals, validate
from uniklab.backends import registry
from uniklab.errors import (
    ConflictError,
    HostFullError,
    HostUnreachableError,
    NotFoundError,
    ProbeTimeoutError,
    UniklabError,
    UsageError,
)
from uniklab.guest import console as guest_console
from uniklab.hosts import placement
from uniklab.paths import Paths, default_paths
from uniklab.ports import free_port, port_free

# What a verb needs is imported by that verb: `uniklab ps` does not load the bakers, the
# probes (redis) or the launch planning, and `import uniklab.lab` stays cheap.
if TYPE_CHECKING:
    from uniklab.backends.base import Backend, ConsoleAccess, Handle, Inspection, InstanceSpec
    from uniklab.bake import baker, recipe
    from uniklab.bake.image import Manifest
    from uniklab.buildcache import Progress
    from uniklab.channels import ChannelSpec
    from uniklab.hosts.inventory import Host
    from uniklab.net.attach import NicRequest
    from uniklab.net.attachment import Attachment
    from uniklab.options import DEFAULT_WAIT as DEFAULT_WAIT
    from uniklab.options import RunOptions as RunOptions  # part of the Lab API
    from uniklab.probes import base as probes
    from uniklab.state.store import InstanceRow

_REEXPORTED = {"DEFAULT_WAIT": "uniklab.options", "RunOptions": "uniklab.options"}


def __getattr__(name: str) -> Any:
    if name in _REEXPORTED:
        import importlib

        value = getattr(importlib.import_module(_REEXPORTED[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger(__name__)

TEST_TAG = "uniklab-test"
"""The tags of images baked by the test faces start with this (see ``Lab.bake_for_tests``)."""
MAX_RESTARTS = 5
STOP_TIMEOUT = 10.0
"""Seconds a ``stop`` gives the app between SIGTERM and SIGKILL (``docker stop``'s 10)."""
MAX_STOP_TIMEOUT = 3600.0
HOST_BRIDGE = "xenbr0"
"""The bridge a guest joins on a host without user-mode networking (Xen) when ``run``
names none: ``xl``'s own default for a vif."""


@dataclass(frozen=True)
class InstanceView:
    """One row of ``ps``: the store's row joined with the backend's inspection."""

    row: InstanceRow
    inspection: Inspection | None

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def state(self) -> str:
        return self.row.state

    @property
    def forwards(self) -> list[tuple[int, int]]:
        from uniklab.reach import Reach

        return Reach.forwards(self.row)

    @property
    def clone_of(self) -> str | None:
        """The key of the template this instance was restored from; None if it booted."""
        key = self.row.runtime.get("clone_of")
        return str(key) if key else None

    @property
    def address(self) -> str:
        from uniklab.reach import Reach

        fw = self.forwards
        if fw:
            return ",".join(f"127.0.0.1:{h}->{g}" for h, g in fw)
        if not self.row.attachments:  # --net none: reached over its channels
            ports = [str(c.port) for c in Lab.channels_of(self.row) if c.dir == "in"]
            return f"channel:{','.join(ports)}" if ports else ""
        found = Reach.known(self.row)
        return found.ip if found else ""

    def as_dict(self) -> dict[str, object]:
        insp = self.inspection
        return {
            "name": self.row.name,
            "id": self.row.id,
            "image": self.row.image,
            "digest": self.row.digest,
            "backend": self.row.backend,
            "host": self.row.host,
            "state": self.row.state,
            "memory_mb": self.row.memory_mb,
            "vcpus": self.row.vcpus,
            "pid": self.row.pid,
            "cpu_seconds": insp.cpu_seconds if insp else None,
            "uptime": insp.uptime if insp else None,
            "rss_bytes": insp.rss_bytes if insp else None,
            "address": self.address,
            "ports": [{"host": h, "guest": g} for h, g in self.forwards],
            "mac": self.row.attachments[0].mac if self.row.attachments else None,
            "accel": self.row.runtime.get("accel"),
            "clone_of": self.clone_of,
            "labels": self.row.labels,
            "exit_reason": self.row.exit_reason,
            "exit_status": self.row.runtime.get("exit_status"),  # as `stop` heard it
            "created": self.row.created,
        }


@dataclass(frozen=True)
class AddressInfo:
    host: str  # where a client connects from this machine
    ports: list[tuple[int, int]]
    source: str  # how it was found
    guest_address: str | None = None
    netns: str | None = None


def exit_reason(console: str, gone: str = "") -> tuple[str, str]:
    """(state, reason) for a guest whose hypervisor process is gone, from its console; when
    the console says nothing, the backend's word (``gone``: "domain r1 is gone from dom0")."""
    from uniklab.state.store import CRASHED

    return console_verdict(console) or (CRASHED, gone or "hypervisor process died")


def console_verdict(console: str) -> tuple[str, str] | None:
    """(state, reason) a guest's console gives for its end (an app's exit status, a kernel
    panic, the init's fatal word), or None when it says nothing of one."""
    from uniklab.state.store import CRASHED, EXITED

    m = guest_console.EXIT_RE.findall(console)
    if m:
        reason = f"app {m[-1]}"
        return (EXITED if m[-1] == "exited status 0" else CRASHED), reason
    if "Kernel panic" in console:
        line = next(ln for ln in console.splitlines() if "Kernel panic" in ln)
        return CRASHED, line.strip()[:160]
    # A rumprun guest's app: main() returned, or the app called exit().
    ended = [
        (m.start(), f"returned {m.group(2)}", m.group(2))
        for m in guest_console.RUMPRUN_RETURNED_RE.finditer(console)
    ] + [
        (m.start(), f"exited status {m.group(1)}", m.group(1))
        for m in guest_console.RUMPRUN_EXIT_RE.finditer(console)
    ]
    if ended:
        _, how, code = max(ended)
        return (EXITED if code == "0" else CRASHED), f"app {how}"
    # The first fatal line: a rump kernel's own "panic: <why>" comes before rumpuser's
    # generic "PANIC: rumpuser panic".
    words = (guest_console.FATAL, *guest_console.RUMPRUN_FATAL)
    said = next((ln for ln in console.splitlines() if any(w in ln for w in words)), None)
    return (CRASHED, said.strip()[:160]) if said else None


def last_word(console: str) -> str:
    """What a guest's console says of its end ("" if nothing): why a probe's guest died."""
    verdict = console_verdict(console)
    return verdict[1] if verdict else ""


class Lab:
    """The verbs of uniklab over one state store and image store."""

    def __init__(self, paths: Paths | None = None) -> None:
        from uniklab.bake.imagestore import ImageStore
        from uniklab.hosts.service import HostService
        from uniklab.net.service import NetworkService
        from uniklab.reach import Reach
        from uniklab.state.store import Store

        self.paths = (paths or default_paths()).ensure()
        self.store = Store(self.paths.db)
        self.images = ImageStore(self.paths.images)
        self.networks = NetworkService(self.store, self.paths.home / "net")
        self.hosts = HostService(self.store)
        self._stack = contextlib.ExitStack()
        self.reach = Reach(self.store, self.hosts, self._stack)
        self._backends: dict[str, Backend] = {}
        self.silent: set[str] = set()  # hosts that did not answer the last reconcile

    def close(self) -> None:
        self._stack.close()
        self.store.close()

    # -- backends ---------------------------------------------------------------------
    def backend(
        self, name: str = "qemu", kernel: Path | None = None, host: str = "local"
    ) -> Backend:
        """Backend ``name`` on inventory host ``host`` (made once per Lab)."""
        key = f"{name}@{host}"
        if key not in self._backends:
            h = self.hosts.get(host)
            ctx = registry.BackendContext(
                host=h, executor=self.hosts.executor(h), cache=self.paths.cache, kernel=kernel
            )
            self._backends[key] = registry.create(name, ctx)
        return self._backends[key]

    def backend_on(self, host: Host) -> Backend:
        """The backend that runs guests on ``host``."""
        return self.backend(registry.for_host(host).name, host=host.name)

    def backend_of(self, row: InstanceRow) -> Backend:
        return self.backend(row.backend, host=row.host)

    @staticmethod
    def handle(row: InstanceRow) -> Handle:
        from uniklab.backends.base import Handle

        return Handle(pid=row.pid, runtime=row.runtime, name=row.name)

    # -- reconcile --------------------------------------------------------------------
    def reconcile(self) -> dict[int, Inspection]:
        """Make the store tell the truth: dead guests, debris of killed commands.
        Returns what it saw of each live guest, so a listing need not ask again."""
        from uniklab.state.store import CRASHED, CREATING, PAUSED, RUNNING

        self.images.sweep_staging()
        self.networks.reconcile()
        seen: dict[int, Inspection] = {}
        self.silent = set()
        for row in self.store.instances():
            if row.state == CREATING:
                self._reconcile_creating(row)
            elif row.state in (RUNNING, PAUSED):
                if row.host in self.silent:
                    continue
                backend = self.backend_of(row)
                try:
                    insp = backend.inspect(self.handle(row))
                except HostUnreachableError as exc:
                    # Its instances stay as last known (`ps` lists them, on that host).
                    log.warning("host %s skipped: %s", row.host, exc)
                    self.silent.add(row.host)
                    continue
                if insp.alive:
                    seen[row.id] = insp
                else:
                    state, reason = exit_reason(backend.console(self.handle(row)), insp.detail)
                    log.info("instance %s is %s: %s", row.name, state, reason)
                    events.emit(self.paths, state, row.name, reason=reason)
                    # A guest that a `stop` is ending is not restarted, whatever it says.
                    stopping = bool(row.runtime.get("stopping"))
                    if state == CRASHED and not stopping and self._restart(row, reason):
                        continue
                    self.store.update(row.id, state=state, exit_reason=reason)
        return seen

    def _restart(self, row: InstanceRow, reason: str) -> bool:
        """Relaunch a crashed instance whose policy says so; False if it may not."""
        from uniklab.backends.base import spec_from_json

        restarts = int(row.runtime.get("restarts", 0))
        launch = row.runtime.get("launch")
        if row.spec.get("restart") != "on-failure" or not launch or restarts >= MAX_RESTARTS:
            return False
        try:
            spec = self._relinked(spec_from_json(launch))
            handle = self.backend_of(row).create(spec)
        except UniklabError as exc:
            log.warning("restarting %s failed: %s", row.name, exc)
            return False
        log.info("restarted %s (%s)", row.name, reason)
        events.emit(self.paths, "restarted", row.name, reason=reason, restarts=restarts + 1)
        self.store.update(
            row.id,
            pid=handle.pid,
            started=time.time(),
            runtime={
                **row.runtime,
                **handle.runtime,
                "restarts": restarts + 1,
                "last_exit": reason,
            },
        )
        return True

    def _reconcile_creating(self, row: InstanceRow) -> None:
        owner = row.owner_pid
        if owner == os.getpid() or (owner and Path(f"/proc/{owner}").exists()):
            return
        log.info("cleaning up %s, left half-created by a killed command", row.name)
        self._teardown(row)
        self.store.delete_instance(row.id)

    def _teardown(self, row: InstanceRow) -> None:
        from uniklab.backends.base import Handle
        from uniklab.net import attach

        rundir = row.runtime.get("rundir") or str(self.paths.run / str(row.id))
        handle = Handle(pid=row.pid, runtime={**row.runtime, "rundir": rundir}, name=row.name)
        try:
            self.backend_of(row).destroy(handle)
        finally:
            shutil.rmtree(rundir, ignore_errors=True)
            attach.detach(row.attachments, self.networks)

    # -- images -----------------------------------------------------------------------
    def bake(
        self,
        ref: str,
        *,
        tag: str = "latest",
        kernel: str = "host",
        root: str | None = None,
        progress: Progress | None = None,
    ) -> baker.BakeResult:
        from uniklab.bake import recipe

        rec, rec_dir = recipe.load(ref)
        return self.bake_recipe(rec, rec_dir, tag=tag, kernel=kernel, root=root, progress=progress)

    def bake_recipe(
        self,
        rec: recipe.Recipe,
        rec_dir: Path | None = None,
        *,
        tag: str = "latest",
        kernel: str = "host",
        root: str | None = None,
        progress: Progress | None = None,
        index: bool = True,  # point the image's name:tag at it
    ) -> baker.BakeResult:
        """Bake a recipe object (e.g. one made from a bare binary) and index the image."""
        from uniklab.bake import baker

        validate.image_ref(f"{rec.name}:{tag}")
        result = baker.bake(
            rec,
            recipe_dir=rec_dir,
            store=self.images,
            cache=self.paths.cache,
            tag=tag,
            kernel=kernel,
            root=root,
            progress=progress,
        )
        if index:
            self.store.put_image(rec.name, tag, result.manifest.digest)
        return result

    def bake_for_tests(
        self, ref: str, *, fast: bool = True, progress: Progress | None = None
    ) -> Manifest:
        """Bake recipe ``ref`` (a built-in name or a recipe file) under a tag of its own,
        ``tag_for_tests(digest)``, and return the tagged manifest.  ``fast`` (for QEMU's
        microvm): with the specialised kernel and an erofs root when this machine has that
        kernel built (``kernel_choice.fast_default``); else, and when not ``fast``, with the
        host's kernel, which boots on every backend.

        What a test face bakes never repoints a tag someone chose (a user's ``redis:latest``
        baked with ``--kernel specialised`` stays as it is), and, the tag naming the content,
        sessions that bake different inputs under one name never run each other's image.
        """
        from uniklab.bake import kernel_choice, recipe

        rec, rec_dir = recipe.load(ref)
        kernel, root = (fast and kernel_choice.fast_default()) or (kernel_choice.HOST, None)
        result = self.bake_recipe(
            rec, rec_dir, tag=TEST_TAG, kernel=kernel, root=root, progress=progress, index=False
        )
        tag = tag_for_tests(result.manifest.digest)
        self.store.put_image(rec.name, tag, result.manifest.digest)
        return result.manifest.model_copy(update={"name": rec.name, "tag": tag})

    def import_image(
        self, path: str | Path, *, name: str | None = None, tag: str = "latest", **kw: Any
    ) -> Manifest:
        """Import a rumprun unikernel baked elsewhere (``bake.imported.import_image``'s
        keywords) and index it as ``name:tag`` (name: from the file's name)."""
        from uniklab.bake import imported

        name = name if name is not None else imported.default_name(path)
        validate.image_ref(f"{name}:{tag}")
        m = imported.import_image(self.images, path, name=name, tag=tag, **kw)
        self.store.put_image(name, tag, m.digest)
        return m

    def _image_of_file(self, path: str, o: RunOptions) -> str:
        """``run ./redis.bin``: the file imported as ``<name>:file-<digest>`` (a tag of its
        own, so no tag someone chose is moved), its published ports probed."""
        m = self.import_image(path, tag="file", ports=sorted({g for _, g in o.publish}))
        tag = f"file-{m.short_digest}"
        self.store.put_image(m.name, tag, m.digest)
        self.store.delete_image(m.name, "file")
        return f"{m.name}:{tag}"

    def image(self, ref: str, *, bake_missing: bool = False) -> Manifest:
        from uniklab.bake import recipe

        name, tag = validate.image_ref(ref)
        row = self.store.image(name, tag)
        if row is None or not self.images.has(row.digest):
            if bake_missing and name in recipe.builtin_names() and tag == "latest":
                return self.bake(name).manifest
            raise NotFoundError(f"no image {name}:{tag} (bake it first: uniklab bake {name})")
        m = self.images.manifest(row.digest)
        return m.model_copy(update={"name": name, "tag": tag})

    def list_images(self) -> list[Manifest]:
        self.images.sweep_staging()
        out = []
        for row in self.store.images():
            if self.images.has(row.digest):
                m = self.images.manifest(row.digest)
                out.append(m.model_copy(update={"name": row.name, "tag": row.tag}))
        return out

    def rmi(self, ref: str, *, force: bool = False) -> Manifest:
        m = self.image(ref)
        self.reconcile()
        users = [r.name for r in self.store.instances() if r.digest == m.digest]
        if users and not force:
            raise ConflictError(
                f"image {m.ref} is used by: {', '.join(users)} (destroy them first)"
            )
        self.store.delete_image(m.name, m.tag)
        if not self.store.digest_in_use(m.digest):
            from uniklab import templates

            templates.remove_image(self, m.digest)
            self.images.remove(m.digest)
        return m

    # -- instances --------------------------------------------------------------------
    def run(self, image_ref: str, opts: RunOptions | None = None) -> InstanceView:
        from uniklab import boot, run_plan
        from uniklab.backends.base import spec_to_json
        from uniklab.net import attach
        from uniklab.options import DEFAULT_WAIT, RunOptions
        from uniklab.state.store import RUNNING

        # The options were checked when they were made: before any work (or bake) starts.
        o = opts or RunOptions()
        app_args, env = list(o.args), dict(o.env or {})
        if "/" in image_ref and Path(image_ref).is_file():  # a unikernel file: ./redis.bin
            image_ref = self._image_of_file(image_ref, o)
        validate.image_ref(image_ref)
        self.reconcile()
        if o.name and any(r.name == o.name for r in self.store.instances()):
            raise ConflictError(f"an instance named {o.name!r} already exists")
        placing = placement.pool(o.host) is not None
        m = self.image(image_ref, bake_missing=True) if placing else None
        host = self.place(o, m) if m else self.hosts.get(o.host)
        engine = registry.for_host(host)
        backend_name = engine.name
        nets = o.nets
        if not engine.user_networking and not o.offline:
            if o.publish:
                raise UsageError(
                    f"a {engine.name.capitalize()} guest on {host.name} joins a bridge there: "
                    "give --net BRIDGE (and no -p)"
                )
            # Like xl, whose vif without bridge= joins xenbr0.
            nets = nets or (attach.NicRequest(HOST_BRIDGE),)
        m = m or self.image(image_ref, bake_missing=True)
        if engine.image_platform not in m.platforms:
            raise UsageError(
                f"image {m.ref} runs on {', '.join(m.platforms)}, not {backend_name} "
                f"(its kernel: {m.kernel.choice}, root: {m.root_kind})"
            )
        if o.volumes and not m.is_rumprun:
            raise UsageError(
                f"{m.ref} is a Linux image: --disk attaches block devices to rumprun images "
                "(a Linux image's files go in its recipe)"
            )
        from uniklab import templates

        cloned = templates.wanted(o, m, engine)
        if m.is_rumprun and len(nets) > 1:
            # rumprun's config.c: 'currently only 1 "net" configuration is supported'
            raise UsageError(f"{m.ref} is a rumprun unikernel: it takes one NIC (one --net)")
        chans = self._plan_channels(m, o, engine, host.name)
        name = o.name or self._new_name(m.name)
        memory = o.memory_mb if o.memory_mb is not None else validate.memory_mb(m.memory)
        wanted = [] if nets or o.offline else (list(o.publish) or [(0, p) for p in m.ports])
        if len({h for h, _ in wanted if h}) != len([h for h, _ in wanted if h]):
            raise ConflictError("a host port is published twice")
        try:
            row = self.store.reserve(
                name=name,
                image=m.ref,
                digest=m.digest,
                backend=backend_name,
                host=host.name,
                memory_mb=memory,
                vcpus=o.vcpus,
                owner_pid=os.getpid(),
                spec={"args": app_args, "env": env, "publish": [], "restart": o.restart},
                labels=dict(o.labels or {}),
                limit=host.max_instances,
            )
        except HostFullError:
            # Another run took its last place meanwhile: the rest of the pool, if any.
            rest = placement.without(o.host, self, host.name) if placing else None
            if rest is None:
                raise
            return self.run(image_ref, dataclasses.replace(o, host=rest))
        rundir = self.paths.run / str(row.id)
        handle: Handle | None = None
        try:
            # Claimed in the store, so two concurrent runs never pick the same free port.
            forwards = self.store.claim_ports(row.id, wanted, free_port, port_free)
            others = [r for r in self.store.instances() if r.id != row.id]
            host_nets = self._host_networks(host, nets)
            nics = (
                []
                if o.offline
                else run_plan.plan_attachments(
                    engine,
                    nets,
                    name,
                    row.id,
                    self.networks,
                    others,
                    forwards,
                    host.name,
                    host_nets,
                )
            )
            req = boot.BootRequest(
                name=name,
                args=app_args,
                env=env,
                disks=o.volumes,
                nics=nics,
                time_source=self._time_source(nics[0], engine) if nics else None,
                memory_mb=memory,
                vcpus=o.vcpus,
                rundir=rundir,
                channels=chans,
            )
            spec = boot.instance_spec(m, self.images, engine, req)
            # Recorded before anything is made, so a crash leaves a plan to undo.
            self.store.update(row.id, runtime={"rundir": str(rundir)}, attachments=nics)
            faults.point("run.before_taps")
            attach.create_taps(nics)
            faults.point("run.after_taps")
            backend = self.backend(backend_name, spec.kernel, host.name)
            if cloned and (o.clone or templates.can(backend)):  # None: if it can
                wait = o.timeout or DEFAULT_WAIT
                handle = templates.clone(
                    self, m, engine, backend, req, spec, timeout=wait, host=host.name
                )
            else:
                handle = backend.create(spec)
            faults.point("run.after_create")
            runtime = {**handle.runtime, "launch": spec_to_json(spec), "restarts": 0}
            self.store.update(
                row.id,
                state=RUNNING,
                pid=handle.pid,
                started=time.time(),
                runtime=runtime,
                owner_pid=None,
            )
            events.emit(
                self.paths, "created", name, image=m.ref, backend=backend_name, host=host.name
            )
            view = self.view(self.store.instance_by_id(row.id))
            if o.wait:
                self.wait_ready(view, m, timeout=o.timeout or DEFAULT_WAIT)
                events.emit(self.paths, "ready", name)
            signals.raise_pending()  # one swallowed where it landed: what was made goes
            return self.view(self.store.instance_by_id(row.id))
        except BaseException:
            # Whatever this command created, it removes: process, runtime dir, row; a second
            # Ctrl-C or SIGTERM waits until that is done.
            with signals.deferred():
                try:
                    self._teardown(self.store.instance_by_id(row.id))
                finally:
                    self.store.delete_instance(row.id)
                    if handle is not None:
                        events.emit(self.paths, "destroyed", name, reason="run failed")
            raise

    def _plan_channels(
        self, m: Manifest, o: RunOptions, engine: registry.BackendType, host: str
    ) -> list[ChannelSpec]:
        """The channels of a new guest: its ``--channel`` ports (with ``--net none``, by
        default the image's), then its links, each joined to a running instance's channel."""
        from uniklab.bake import kernel_choice
        from uniklab.channels import GUEST_DRIVERS, MAX_CHANNELS, ChannelSpec, socket_path
        from uniklab.state.store import RUNNING

        ports = list(o.channels) or (list(m.ports) if o.offline else [])
        links = o.link_requests
        if not ports and not links:
            return []
        if len(ports) + len(links) > MAX_CHANNELS:
            raise UsageError(f"at most {MAX_CHANNELS} channels and links per guest")
        if engine.channels is None:
            raise UsageError(f"channels are not available on the {engine.name} backend yet")
        if m.is_rumprun:
            raise UsageError(f"{m.ref} is a rumprun unikernel: no channels (no init of ours)")
        driver, symbol = GUEST_DRIVERS[engine.channels]
        if m.kernel.choice.startswith("specialised") and not kernel_choice.built_with(
            m.kernel.choice, symbol
        ):
            raise UsageError(
                f"{m.ref} boots a specialised kernel without {driver} (built before "
                "channels): rebuild it (uniklab kernel build) and bake the image again"
            )
        out = [ChannelSpec(p) for p in ports]
        locals_ = [lk.local for lk in links]
        if len(set(locals_)) != len(locals_):
            raise UsageError("two links use the same local port")
        for lk in links:
            if lk.local in m.ports:
                raise UsageError(
                    f"link {lk.other}:{lk.port}: local port {lk.local} is {m.ref}'s own port: "
                    f"give another one (--link {lk.other}:{lk.port}:LOCAL)"
                )
            other = self.store.instance(lk.other)  # NotFoundError names it
            if other.state != RUNNING:
                raise UsageError(f"link {lk.other}:{lk.port}: {lk.other} is {other.state}")
            if lk.port not in [c.port for c in self.channels_of(other) if c.dir == "in"]:
                raise UsageError(
                    f"link {lk.other}:{lk.port}: {lk.other} has no channel to port {lk.port} "
                    f"(run it with --channel {lk.port})"
                )
            if engine.channels == "vchan" and (other.backend, other.host) != (engine.name, host):
                # Two domains share a vchan only on one Xen host.
                raise UsageError(
                    f"link {lk.other}:{lk.port}: {lk.other} runs on {other.host} "
                    f"({other.backend}), not on Xen host {host}: a Xen guest links to guests "
                    "of its own host"
                )
            target = socket_path(Path(str(other.runtime["rundir"])), lk.port)
            out.append(ChannelSpec(lk.local, "out", str(target), f"{lk.other}:{lk.port}"))
        return out

    def _relinked(self, spec: InstanceSpec) -> InstanceSpec:
        """``spec`` with each link's target found again by its instance's name (which may
        have been destroyed and run anew since): what a new launch of it joins."""
        import dataclasses

        from uniklab.channels import parse_link, socket_path

        rundirs = {r.name: r.runtime.get("rundir") for r in self.store.instances()}
        chans = []
        for ch in spec.channels:
            if ch.peer:
                peer = parse_link(ch.peer)
                if rundirs.get(peer.other):
                    rundir = Path(str(rundirs[peer.other]))
                    ch = dataclasses.replace(ch, target=str(socket_path(rundir, peer.port)))
            chans.append(ch)
        return dataclasses.replace(spec, channels=tuple(chans))

    @staticmethod
    def channels_of(row: InstanceRow) -> list[ChannelSpec]:
        from uniklab.channels import ChannelSpec

        launch = row.runtime.get("launch")
        found = launch.get("channels", []) if isinstance(launch, dict) else []
        return [ChannelSpec.from_json(c) for c in found]

    def channel(self, name: str, port: int) -> Path:
        """The host's UNIX socket of running instance ``name``'s channel to guest ``port``."""
        from uniklab.channels import socket_path
        from uniklab.state.store import RUNNING

        validate.port(port, "channel port")
        row = self.store.instance(name)
        if port not in [c.port for c in self.channels_of(row) if c.dir == "in"]:
            raise NotFoundError(
                f"{name} has no channel to port {port} (run it with --channel {port})"
            )
        if row.state != RUNNING:
            raise UniklabError(f"{name} is {row.state}: its channels are closed")
        return socket_path(Path(str(row.runtime["rundir"])), port)

    def _host_networks(self, host: Host, nets: Sequence[NicRequest]) -> dict[str, str]:
        """The networks of ``host``'s own engine that ``nets`` name (libvirt's networks
        there: name → bridge)."""
        if not nets or host.libvirt is None:
            return {}
        from uniklab.net import libvirt_net

        return libvirt_net.named(self, host, [n.network for n in nets])

    def _time_source(self, nic: Attachment, engine: registry.BackendType) -> str | None:
        """Where the guest reads the host's clock: its user-mode network's time service,
        or its uniklab network's (a guest on a host's own bridge keeps its RTC)."""
        if nic.kind == "user":
            return engine.user_net.time_source if engine.user_net else None
        if nic.kind == "bridge" and nic.net:
            return self.networks.time_source(nic.net)
        return None

    def _new_name(self, image_name: str) -> str:
        return f"{image_name}-{secrets.token_hex(3)}"

    def view(self, row: InstanceRow, inspection: Inspection | None = None) -> InstanceView:
        from uniklab.state.store import PAUSED, RUNNING

        insp = None
        if row.state in (RUNNING, PAUSED) and row.host not in self.silent:
            insp = inspection or self.backend_of(row).inspect(self.handle(row))
            first = self.reach.first(row)
            bridged = first is not None and first.kind != "user"
            if bridged and self.reach.known(row) is None and self.reach.address(row, timeout=0):
                row = self.store.instance_by_id(row.id)
        return InstanceView(row, insp)

    def get(self, name: str) -> InstanceView:
        self.reconcile()
        return self.view(self.store.instance(name))

    def ps(
        self, *, all: bool = True, labels: Mapping[str, str] | None = None
    ) -> list[InstanceView]:
        from uniklab.state.store import PAUSED, RUNNING

        seen = self.reconcile()
        rows = self.store.instances()
        if labels:
            rows = [r for r in rows if all_items_in(labels, r.labels)]
        if not all:
            rows = [r for r in rows if r.state in (RUNNING, PAUSED)]
        return [self.view(r, seen.get(r.id)) for r in rows]

    def place(self, o: RunOptions, m: Manifest) -> Host:
        """The host of ``--host auto`` (or a pool ``a,b``) for a guest of image ``m``
        (hosts/placement.py): of the hosts whose engine can run it and that are under their
        instance limit, the one that answers with the most free memory."""
        memory = o.memory_mb if o.memory_mb is not None else validate.memory_mb(m.memory)
        return placement.place(self, o.host, memory_mb=memory, unfit=lambda h: unfit(h, o, m))

    def network_users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        for row in self.store.instances():
            for nic in row.attachments:
                if nic.kind == "bridge" and nic.net:
                    users.setdefault(nic.net, []).append(row.name)
        return users

    def logs(self, name: str) -> str:
        view = self.get(name)
        return self.backend_of(view.row).console(self.handle(view.row))

    def follow(self, name: str, *, lines: int | None = None) -> Generator[str, None, None]:
        """The console of ``name``: its last ``lines`` lines so far (all with None), then
        what the guest writes, as it comes, until the guest is gone (at once if it is)."""
        view = self.get(name)
        return self.backend_of(view.row).follow(self.handle(view.row), lines=lines)

    def attach(self, name: str) -> ConsoleAccess:
        """How a terminal joins the console of running instance ``name``."""
        view = self.get(name)
        if view.inspection is None or not view.inspection.alive:
            raise UniklabError(f"{name} is {view.state}: no console to attach to")
        return self.backend_of(view.row).attach(self.handle(view.row))

    def ip(self, name: str, *, timeout: float = 30.0) -> AddressInfo:
        from uniklab.state.store import RUNNING

        view = self.get(name)
        guest = None
        for m in guest_console.NET_RE.finditer(self.logs(name)):
            guest = m.group(3).split("/")[0]
        if view.forwards:
            engine = registry.get(view.row.backend)
            user = engine.user_net.guest if engine.user_net else None
            return AddressInfo(
                "127.0.0.1", view.forwards, "user-mode networking (ports forwarded)", guest or user
            )
        if not view.row.attachments:
            raise NotFoundError(
                f"{name} has no NIC: reach it over its channels (uniklab channel {name} PORT)"
            )
        first = self.reach.first(view.row)
        if first and first.kind != "user" and view.state == RUNNING:
            found = self.reach.address(view.row, timeout=timeout)
            assert found is not None  # a timeout raises
            return AddressInfo(found.ip, [], found.source, found.ip, self.reach.netns(view.row))
        raise NotFoundError(f"{name} has no address reachable from this machine")

    def endpoint(self, view: InstanceView, guest_port: int | None) -> probes.Endpoint:
        """Where a client on this machine connects to ``guest_port`` of the guest: a guest
        without a NIC over its channel to that port."""
        from uniklab.probes.base import Endpoint

        row = self.store.instance_by_id(view.row.id)
        if not row.attachments and guest_port is not None:
            return Endpoint("", guest_port, path=str(self.channel(row.name, guest_port)))
        return self.reach.endpoint(self.store.instance_by_id(view.row.id), guest_port)

    def wait_ready(self, view: InstanceView, m: Manifest, *, timeout: float) -> probes.ProbeResult:
        from uniklab.probes import base as probes
        from uniklab.probes.kinds import from_spec

        backend = self.backend_of(view.row)
        handle = self.handle(view.row)
        probe = from_spec(m.probe, lambda: backend.console(handle))
        port = m.probe.port or (m.ports[0] if m.ports else None)
        return probes.wait(
            probe,
            lambda: self.endpoint(view, port),
            timeout=timeout,
            alive=lambda: backend.inspect(handle).alive,
            console_tail=lambda: tail(backend.console(handle), 15),
            why_stopped=lambda: last_word(backend.console(handle)),
        )

    def check(self, name: str, *, timeout: float = 5.0) -> probes.ProbeResult:
        from uniklab.probes import base as probes
        from uniklab.probes.kinds import from_spec
        from uniklab.state.store import RUNNING

        view = self.get(name)
        if view.state != RUNNING:
            raise UniklabError(f"{name} is {view.state}: {view.row.exit_reason or ''}".rstrip(": "))
        m = self.images.manifest(view.row.digest)
        backend = self.backend_of(view.row)
        probe = from_spec(m.probe, lambda: backend.console(self.handle(view.row)))
        port = m.probe.port or (m.ports[0] if m.ports else None)
        result = probes.once(probe, self.endpoint(view, port), timeout=timeout)
        if not result.ok:
            raise ProbeTimeoutError(
                f"{name}: {probe.name} probe failed",
                last_error=result.detail,
                console_tail=tail(self.logs(name), 15),
            )
        return result

    # -- lifecycle: stop, start, restart, pause, resume ------------------------------------
    def _in_state(self, name: str, verb: str, states: tuple[str, ...]) -> InstanceRow:
        """The row of ``name`` after a reconcile, if it is in one of ``states``."""
        self.reconcile()
        row = self.store.instance(name)
        if row.state not in states:
            allowed = " or ".join([", ".join(states[:-1]), states[-1]] if states[:-1] else states)
            raise UsageError(f"cannot {verb} {name}: it is {row.state} (only {allowed})")
        return row

    def stop(self, name: str, *, timeout: float = STOP_TIMEOUT) -> InstanceView:
        """Graceful stop: the app gets SIGTERM, ``timeout`` seconds, then SIGKILL, and the
        guest powers off.  The instance stays (``stopped``, with the app's exit status)
        for ``start``."""
        from uniklab.state.store import PAUSED, RUNNING, STOPPED

        if not 0 <= timeout <= MAX_STOP_TIMEOUT:
            raise UsageError(f"invalid stop timeout {timeout}: 0 to {MAX_STOP_TIMEOUT:g} seconds")
        row = self._in_state(name, "stop", (RUNNING, PAUSED))
        # Marked first: a reconcile by another command meanwhile must not restart it.
        self.store.update(row.id, runtime={**row.runtime, "stopping": os.getpid()})
        try:
            status = self.backend_of(row).stop(self.handle(row), timeout=timeout)
        except BaseException:
            self.store.update(row.id, runtime=row.runtime)
            raise
        runtime = {k: v for k, v in row.runtime.items() if k != "stopping"}
        self.store.update(
            row.id,
            state=STOPPED,
            pid=None,
            exit_reason=None if status is None else f"app exit status {status}",
            runtime={**runtime, "exit_status": status},
        )
        events.emit(self.paths, "stopped", name, exit_status=status)
        return self.view(self.store.instance_by_id(row.id))

    def start(self, name: str, *, wait: bool = True, timeout: float | None = None) -> InstanceView:
        """Start a stopped (or exited) instance again from its stored launch: same name,
        MAC and ports (a port taken meanwhile is replaced by a free one)."""
        from uniklab.backends.base import spec_from_json, spec_to_json
        from uniklab.options import DEFAULT_WAIT
        from uniklab.state.store import CRASHED, EXITED, RUNNING, STOPPED

        row = self._in_state(name, "start", (STOPPED, EXITED, CRASHED))
        launch = row.runtime.get("launch")
        if not launch:
            raise UsageError(f"cannot start {name}: it has no launch record (destroy it)")
        spec = self._relinked(self._with_free_ports(row, spec_from_json(launch)))
        handle = self.backend_of(row).create(spec)
        # It boots now, a clone no more.
        gone = ("stopping", "exit_status", "clone_of")
        runtime = {k: v for k, v in row.runtime.items() if k not in gone}
        self.store.update(
            row.id,
            state=RUNNING,
            pid=handle.pid,
            started=time.time(),
            exit_reason=None,
            attachments=list(spec.nics),
            runtime={**runtime, **handle.runtime, "launch": spec_to_json(spec)},
        )
        events.emit(self.paths, "started", name)
        view = self.view(self.store.instance_by_id(row.id))
        if wait:
            m = self.images.manifest(row.digest)
            self.wait_ready(view, m, timeout=timeout or DEFAULT_WAIT)
            view = self.view(self.store.instance_by_id(row.id))
        return view

    def _with_free_ports(self, row: InstanceRow, spec: InstanceSpec) -> InstanceSpec:
        """``spec`` with each published port that another program took meanwhile replaced
        by a free one (claimed in the store, as ``run`` claims them)."""
        nics = list(spec.nics)
        for i, nic in enumerate(nics):
            if nic.kind != "user" or all(port_free(h) for h, _ in nic.forwards):
                continue
            wanted = [(h if port_free(h) else 0, g) for h, g in nic.forwards]
            forwards = self.store.claim_ports(row.id, wanted, free_port, port_free)
            log.info("%s: published ports now %s", row.name, forwards)
            nics[i] = dataclasses.replace(nic, forwards=tuple(forwards))
        return dataclasses.replace(spec, nics=tuple(nics))

    def restart(self, name: str, *, timeout: float = STOP_TIMEOUT) -> InstanceView:
        """``stop`` (a running or paused instance), then ``start``."""
        from uniklab.state.store import PAUSED, RUNNING

        if self.get(name).state in (RUNNING, PAUSED):
            self.stop(name, timeout=timeout)
        view = self.start(name)
        events.emit(self.paths, "restarted", name)
        return view

    def pause(self, name: str) -> InstanceView:
        """Freeze the guest (its vCPUs stop; memory, NICs and ports stay)."""
        from uniklab.state.store import PAUSED, RUNNING

        row = self._in_state(name, "pause", (RUNNING,))
        self.backend_of(row).pause(self.handle(row))
        self.store.update(row.id, state=PAUSED)
        events.emit(self.paths, "paused", name)
        return self.view(self.store.instance_by_id(row.id))

    def resume(self, name: str) -> InstanceView:
        from uniklab.state.store import PAUSED, RUNNING

        row = self._in_state(name, "resume", (PAUSED,))
        self.backend_of(row).resume(self.handle(row))
        self.store.update(row.id, state=RUNNING)
        events.emit(self.paths, "resumed", name)
        return self.view(self.store.instance_by_id(row.id))

    def destroy(self, name: str) -> InstanceRow:
        self.reconcile()
        row = self.store.instance(name)
        # Stopped half way, the row would go and the guest stay: hold signals until done.
        with signals.deferred():
            try:
                self._teardown(row)
            finally:
                self.store.delete_instance(row.id)
                events.emit(self.paths, "destroyed", row.name)
        return row


def unfit(host: Host, o: RunOptions, m: Manifest) -> str | None:
    """Why ``host``'s engine cannot run image ``m`` as ``o`` asks (None: it can): the
    reasons ``run`` gives on a named host, asked before placing on one."""
    engine = registry.for_host(host)
    if engine.image_platform not in m.platforms:
        return f"{engine.name} there runs {engine.image_platform} images, {m.ref} is not one"
    microvm_kernel = engine.image_platform == "qemu" and not m.acpi  # no PCI
    if engine.name == "libvirt" and (m.is_rumprun or m.block_root or microvm_kernel):
        # Its create says the same, once planned (backends/libvirt.py).
        return f"libvirt there boots Linux images with an initramfs, {m.ref} is not one"
    if o.publish and not engine.user_networking:
        return f"{engine.name} there has no user-mode network to publish ports from"
    if not o.nets and engine.user_networking and not host.is_local:
        return "its user-mode ports would not be on this machine (give --net BRIDGE)"
    return None


def tag_for_tests(digest: str) -> str:
    """The tag a test face gives the image it baked: ``uniklab-test-<12 hex of the digest>``."""
    return f"{TEST_TAG}-{digest.split(':', 1)[-1][:12]}"


def all_items_in(want: Mapping[str, str], have: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
