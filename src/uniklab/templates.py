"""Templates and clones: a guest booted once and saved when ready; later guests of the same
image and options are restored from it (clones) instead of booting.

A template is keyed by everything that determines the saved guest: the image digest, the
template's own instance spec (kernel, command line with the app's args, env and network
config, memory, vCPUs, devices) with per-instance names, paths and host ports made
neutral, and what the backend adds (its version, accelerator, command line).  It lives in
the home's ``templates/<key>/``: ``meta.json`` and the backend's files, built in a
``.b<pid>-<key prefix>`` directory and renamed into place, checked (sizes, hashes of the
small files) before each clone, rebuilt when a check fails.  An flock per key keeps two
commands from building the same template at once and ``template rm`` from pulling one
from under a clone being restored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uniklab import daemons
from uniklab.errors import ConflictError, NotFoundError, UsageError

if TYPE_CHECKING:
    from uniklab.backends.base import Backend, Handle, InstanceSpec
    from uniklab.backends.registry import BackendType
    from uniklab.bake.image import Manifest
    from uniklab.boot import BootRequest
    from uniklab.lab import Lab
    from uniklab.options import RunOptions
    from uniklab.paths import Paths

log = logging.getLogger(__name__)

FORMAT = 1  # of meta.json and the key's material: a change rebuilds every template
META = "meta.json"
HASHED_MAX = 4 << 20  # files up to this size are hashed at each check; larger: size + mtime
BUILD_PREFIX = ".b"
LOCK_SUFFIX = ".lock"
# The template guest's MAC (its first NIC's; the next ones count on): a template is the
# same guest for every clone.
TEMPLATE_MAC = "52:54:00:75:6b:01"
DROP_TIMEOUT = 60.0  # for a backend to remove what a template keeps on its host
LOCK_POLL = 0.05
KEY_CHARS = 64


@dataclass(frozen=True)
class Template:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def image(self) -> str:
        return str(self.meta.get("image", ""))

    @property
    def digest(self) -> str:
        return str(self.meta.get("digest", ""))

    @property
    def size_bytes(self) -> int:
        """What its files take on disk (the RAM file is sparse: only what the guest touched)."""
        return sum(p.stat().st_blocks * 512 for p in self.path.iterdir() if p.is_file())

    def as_dict(self) -> dict[str, object]:
        m = self.meta
        return {
            "key": self.key,
            "image": self.image,
            "digest": self.digest,
            "backend": m.get("backend"),
            "host": m.get("host") or "local",
            "memory_mb": m.get("memory_mb"),
            "vcpus": m.get("vcpus"),
            "args": m.get("args"),
            "env": m.get("env"),
            "ports": m.get("ports"),
            "created": m.get("created"),
            "build_seconds": m.get("build_seconds"),
            "size_bytes": self.size_bytes,
            "path": str(self.path),
        }


def root(paths: Paths) -> Path:
    return paths.home / "templates"


# -- may this run be a clone? -----------------------------------------------------------
def refusal(o: RunOptions, m: Manifest, engine: BackendType) -> str | None:
    """Why ``o`` on ``m`` cannot be a clone (one line), or None."""
    if m.is_rumprun:
        # No init of ours hears "restored": its clock would stay the template's.
        return f"{m.ref} is a rumprun unikernel: its clock cannot be reset after a restore"
    if (o.nets or not engine.user_networking) and not engine.clones_readdress:
        return "a clone joins the user-mode network only (each one the same MAC and address)"
    if any(n.ip or n.gateway for n in o.nets):
        return "a clone takes its address by DHCP (no ip= or gw= on --net)"
    if o.volumes:
        return "writable disks (--disk) cannot be shared between clones"
    if o.offline or o.channels or o.links:
        return "channels (--channel, --link, --net none) are made at boot, not restored"
    if o.restart != "no":
        return "--restart on-failure boots the guest again: use it without --template"
    return None


def wanted(o: RunOptions, m: Manifest, engine: BackendType) -> bool:
    """Whether this run is a clone: ``o.clone`` True (refused with one line if it cannot),
    None (when it can), False."""
    if o.clone is False:
        return False
    why = refusal(o, m, engine)
    if why is not None and o.clone:
        raise UsageError(f"cannot clone {m.ref}: {why}")
    return why is None


def can(backend: Backend) -> bool:
    """Whether ``backend`` makes templates (overrides the protocol's refusing default)."""
    from uniklab.backends.base import Backend as Protocol

    mine = getattr(type(backend), "restore_clone", None)
    return mine is not None and mine is not Protocol.restore_clone


# -- the key ----------------------------------------------------------------------------
def template_mac(index: int) -> str:
    return TEMPLATE_MAC[:-2] + f"{int(TEMPLATE_MAC[-2:], 16) + index:02x}"


def template_request(m: Manifest, req: BootRequest) -> BootRequest:
    """The template's own boot: named after its image, with fixed MACs.  A clone on the
    user-mode network: one user-mode NIC with the clone's guest ports (host ports picked
    when it boots).  A clone on bridges (an engine whose clones re-address): the clone's
    NICs, by DHCP, each with the template's MAC.  Its runtime directory is chosen once its
    key is known."""
    from uniklab.net.attachment import Attachment

    if req.nics and all(n.kind != "user" for n in req.nics):
        nics = tuple(
            Attachment(kind=n.kind, mac=template_mac(i), net=n.net, bridge=n.bridge)
            for i, n in enumerate(req.nics)
        )
    else:
        guest_ports = tuple((0, g) for nic in req.nics for _, g in nic.forwards)
        nics = (Attachment(kind="user", mac=TEMPLATE_MAC, forwards=guest_ports),)
    return replace(req, name=m.name, nics=nics, rundir=Path("/template"))


def neutral(spec: InstanceSpec) -> InstanceSpec:
    """``spec`` without what differs between two boots of the same template."""
    nics = tuple(replace(n, forwards=tuple((0, g) for _, g in n.forwards)) for n in spec.nics)
    return replace(spec, rundir=Path("/template"), nics=nics, memory_file=None)


def key(m: Manifest, spec: InstanceSpec, backend: Backend) -> str:
    """The key of the template of ``spec`` (the template's, see ``template_request``)."""
    from uniklab.backends.base import spec_to_json

    spec = neutral(spec)
    material = {
        "format": FORMAT,
        "digest": m.digest,
        "spec": spec_to_json(spec),
        "backend": backend.name,
        "backend_key": backend.template_key(spec),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


# -- the store ----------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(path: Path) -> dict[str, object]:
    st = path.stat()
    if st.st_size <= HASHED_MAX:
        return {"size": st.st_size, "sha256": _sha256(path)}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check(path: Path, key_: str) -> Template:
    """The template at ``path`` if whole (its meta, every file it lists as it was
    written); NotFoundError saying what is wrong otherwise."""
    try:
        meta = json.loads((path / META).read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key_:
            raise NotFoundError(f"template {key_[:12]}: its {META} is not this template's")
        files = meta["files"]
        for name, want in files.items():
            if _fingerprint(path / name) != want:
                raise NotFoundError(f"template {key_[:12]}: {name} changed since it was saved")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotFoundError(f"template {key_[:12]}: {exc}") from exc
    return Template(key_, path, meta)


@contextlib.contextmanager
def _locked(lock: Path, kind: int, *, timeout: float) -> Iterator[int]:
    """Hold ``lock`` (LOCK_SH or LOCK_EX), waiting at most ``timeout`` seconds."""
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, kind | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConflictError(
                        f"template {lock.stem[:12]} is busy (being built or removed by "
                        f"another command) for more than {timeout:.0f} s"
                    ) from None
                time.sleep(LOCK_POLL)
        yield fd
    finally:
        os.close(fd)


def _lock_path(base: Path, key_: str) -> Path:
    return base / (key_ + LOCK_SUFFIX)


def clone(
    lab: Lab,
    m: Manifest,
    engine: BackendType,
    backend: Backend,
    req: BootRequest,
    spec: InstanceSpec,
    *,
    timeout: float,
    host: str = "local",
) -> Handle:
    """Start ``spec`` as a clone of its template on ``host``, building the template first
    if it is missing or damaged (``timeout``: for its guest to be ready).  A template the
    backend finds gone or changed on its side (NotFoundError from ``restore_clone``: a
    checkpoint on the host) is rebuilt once, and the clone restored from the new one."""
    plan = _plan(lab, m, engine, backend, req, host)
    lock = _lock_path(root(lab.paths), plan.key)
    wait = timeout + 60.0
    why = ""
    stale: Template | None = None  # the one restore_clone refused
    for _ in range(3):  # found; or built, then found (unless removed at once again)
        with _locked(lock, fcntl.LOCK_SH, timeout=wait):  # held while the clone reads it
            try:
                t = check(plan.path, plan.key)
            except NotFoundError as exc:
                why = str(exc)
            else:
                try:
                    return backend.restore_clone(spec, t.path)
                except NotFoundError as exc:
                    if stale is not None:  # rebuilt once already
                        raise
                    why, stale = str(exc), t
        with _locked(lock, fcntl.LOCK_EX, timeout=wait):
            _check_or_build(lab, m, backend, plan, why, timeout=timeout, stale=stale)
    raise ConflictError(f"{why} (removed again as soon as it was built)")


def create(
    lab: Lab,
    m: Manifest,
    engine: BackendType,
    backend: Backend,
    req: BootRequest,
    *,
    timeout: float,
    host: str = "local",
) -> tuple[Template, bool]:
    """The template of ``req`` on ``m``, built if missing or damaged; and whether it was."""
    plan = _plan(lab, m, engine, backend, req, host)
    with _locked(_lock_path(root(lab.paths), plan.key), fcntl.LOCK_EX, timeout=timeout + 60.0):
        try:
            return check(plan.path, plan.key), False
        except NotFoundError as why:
            return _check_or_build(lab, m, backend, plan, str(why), timeout=timeout), True


@dataclass(frozen=True)
class _Plan:
    spec: InstanceSpec  # the template's boot
    key: str
    path: Path
    host: str  # the inventory host it runs on
    about: dict[str, object]  # for its meta: what a person asks of it


def _plan(
    lab: Lab,
    m: Manifest,
    engine: BackendType,
    backend: Backend,
    req: BootRequest,
    host: str = "local",
) -> _Plan:
    from uniklab import boot

    if not can(backend):  # before a template guest boots for nothing
        raise UsageError(f"the {backend.name} backend cannot make templates")

    base = root(lab.paths)
    tspec = boot.instance_spec(m, lab.images, engine, template_request(m, req))
    k = key(m, tspec, backend)  # the build directory is not part of it
    # Built in STAGING/KEY, so that the backend sees the key as the name of its ``dest``
    # (what it names its own files after: a checkpoint on a Xen host), then renamed; the
    # guest's runtime directory is STAGING/r (short: QEMU's sockets are in it).
    staging = base / f"{BUILD_PREFIX}{os.getpid()}-{k[:8]}"
    tspec = replace(tspec, rundir=staging / "r")
    about: dict[str, object] = {"args": list(req.args), "env": dict(req.env), "host": host}
    return _Plan(tspec, k, base / k, host, about)


def _check_or_build(
    lab: Lab,
    m: Manifest,
    backend: Backend,
    plan: _Plan,
    why: str,
    *,
    timeout: float,
    stale: Template | None = None,
) -> Template:
    """Under the key's exclusive lock: the template if another command built it since it
    was found missing (or since ``stale``, refused by the backend, was found), else built
    now (what was there removed first, on the backend's side too)."""
    try:
        t = check(plan.path, plan.key)
    except NotFoundError:
        pass
    else:
        if stale is None or t.meta.get("created") != stale.meta.get("created"):
            return t
    if plan.path.exists():
        log.warning("rebuilding %s", why)
        _drop(lab, plan.path, backend)
        shutil.rmtree(plan.path)
    return _build(lab, m, backend, plan, timeout=timeout)


def _build(lab: Lab, m: Manifest, backend: Backend, plan: _Plan, *, timeout: float) -> Template:
    from uniklab.lab import last_word
    from uniklab.ports import free_port
    from uniklab.probes import base as probe_base
    from uniklab.probes.kinds import from_spec

    tspec, k, path = plan.spec, plan.key, plan.path
    staging = tspec.rundir.parent
    build = staging / k
    shutil.rmtree(staging, ignore_errors=True)  # this pid's, left by an earlier failure
    staging.mkdir(mode=0o700, parents=True)
    build.mkdir(mode=0o700)
    started = time.monotonic()
    nics = tuple(
        replace(n, forwards=tuple((free_port(), g) for _, g in n.forwards)) for n in tspec.nics
    )
    spec = replace(tspec, nics=nics, memory_file=build / "memory")
    handle = None
    try:
        log.info("building template %s of %s", k[:12], m.ref)
        handle = backend.create(spec)
        h = handle
        probe = from_spec(m.probe, lambda: backend.console(h))
        port = m.probe.port or (m.ports[0] if m.ports else None)
        host_port = next((hp for n in nics for hp, g in n.forwards if g == port), None)

        def endpoint() -> probe_base.Endpoint:
            if nics and nics[0].kind == "host-bridge":  # found by MAC there, tunnelled
                return lab.reach.on_host(plan.host, nics[0], port)
            return probe_base.Endpoint("127.0.0.1", host_port)

        probe_base.wait(
            probe,
            endpoint,
            timeout=timeout,
            alive=lambda: backend.inspect(h).alive,
            console_tail=lambda: "\n".join(backend.console(h).splitlines()[-15:]),
            why_stopped=lambda: last_word(backend.console(h)),
        )
        handle = None  # save_template ends the guest
        backend.save_template(h, build)
        files = {p.name: _fingerprint(p) for p in sorted(build.iterdir()) if p.is_file()}
        meta = {
            "format": FORMAT,
            "key": k,
            "image": m.ref,
            "digest": m.digest,
            "backend": backend.name,
            "memory_mb": tspec.memory_mb,
            "vcpus": tspec.vcpus,
            **plan.about,
            "ports": [g for n in tspec.nics for _, g in n.forwards],
            "created": time.time(),
            "build_seconds": round(time.monotonic() - started, 3),
            "files": files,
        }
        (build / META).write_text(json.dumps(meta, indent=1))
        os.rename(build, path)
    except BaseException:
        if handle is not None:
            backend.destroy(handle)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return Template(k, path, meta)


def _drop(lab: Lab, path: Path, backend: Backend | None = None) -> None:
    """Have the backend of the template in ``path`` (its meta names it and its host)
    remove what it keeps on its host, within DROP_TIMEOUT; a host that cannot be reached
    (or a meta that cannot be read) is one warning line, and the caller still removes
    ``path``."""
    from uniklab.errors import UniklabError

    if backend is None:
        try:
            meta = json.loads((path / META).read_text())
            name, host = str(meta["backend"]), str(meta.get("host") or "local")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("template %s: no backend to ask (%s)", path.name[:12], exc)
            return
    try:
        if backend is None:
            backend = lab.backend(name, host=host)
        backend.drop_template(path, timeout=DROP_TIMEOUT)
    except UniklabError as exc:
        log.warning("template %s: its files on its host stay: %s", path.name[:12], exc)


# -- listing, removal, gc -----------------------------------------------------------------
def ls(paths: Paths) -> list[Template]:
    """The whole templates of this home (a damaged one is listed by ``leftovers``)."""
    out = []
    base = root(paths)
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.is_dir() and len(d.name) == KEY_CHARS:
            try:
                out.append(check(d, d.name))
            except NotFoundError as exc:
                log.info("%s", exc)
    return out


def find(paths: Paths, prefix: str) -> Template:
    """The template whose key starts with ``prefix`` (at least 4 characters)."""
    if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
        raise UsageError(f"invalid template key {prefix!r}: 4 to 64 hex digits")
    found = [t for t in ls(paths) if t.key.startswith(prefix)]
    if not found:
        raise NotFoundError(f"no template {prefix}")
    if len(found) > 1:
        raise UsageError(f"template key {prefix} is ambiguous: give more of it")
    return found[0]


def remove(lab: Lab, key_: str, *, timeout: float = 30.0) -> None:
    """Remove template ``key_`` once no clone is being restored from it (running clones
    keep what they mapped), its backend's files on its host first."""
    base = root(lab.paths)
    with _locked(_lock_path(base, key_), fcntl.LOCK_EX, timeout=timeout):
        if (base / key_).is_dir():
            _drop(lab, base / key_)
        shutil.rmtree(base / key_, ignore_errors=True)
    _lock_path(base, key_).unlink(missing_ok=True)


def remove_image(lab: Lab, digest: str) -> list[str]:
    """Remove every template of image ``digest``; their keys."""
    gone = []
    for t in ls(lab.paths):
        if t.digest == digest:
            remove(lab, t.key)
            gone.append(t.key)
    return gone


def remove_dir(lab: Lab, path: Path) -> None:
    """Remove what ``leftovers`` found as a "template" (maybe damaged)."""
    if path.parent == root(lab.paths) and len(path.name) == KEY_CHARS:
        remove(lab, path.name)
    else:
        shutil.rmtree(path, ignore_errors=True)


def leftovers(paths: Paths, digests: set[str]) -> list[tuple[str, Path, str]]:
    """What ``gc`` removes here: (kind, path, why) for templates of images not in
    ``digests`` or damaged ("template"), builds of commands no longer running
    ("staging")."""
    base = root(paths)
    out: list[tuple[str, Path, str]] = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.name.startswith(BUILD_PREFIX) and d.is_dir():
            pid = d.name[len(BUILD_PREFIX) :].split("-")[0]
            if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                out.append(("staging", d, "template build of a command that is gone"))
        elif d.is_dir() and len(d.name) == KEY_CHARS:
            try:
                t = check(d, d.name)
            except NotFoundError as exc:
                out.append(("template", d, f"damaged: {exc}"))
                continue
            if t.digest.replace(":", "-") not in digests and t.digest not in digests:
                out.append(("template", d, f"template of {t.image}, an image that is gone"))
    return out


def sweep_build(path: Path) -> None:
    """Remove a build directory of a command that is gone, and the QEMU it may have left."""
    for pid, _ in daemons.scan(str(path) + "/"):
        daemons.stop(pid, str(path) + "/", grace=3.0)
    shutil.rmtree(path, ignore_errors=True)


def create_for(lab: Lab, image_ref: str, o: RunOptions) -> tuple[Template, bool]:
    """The template ``run IMAGE --template`` with options ``o`` clones (``template
    create``): built if missing; and whether it was built now."""
    from uniklab import validate
    from uniklab.backends import registry
    from uniklab.boot import BootRequest
    from uniklab.net.attachment import Attachment

    validate.image_ref(image_ref)
    host = lab.hosts.get(o.host)
    engine = registry.for_host(host)
    m = lab.image(image_ref, bake_missing=True)
    why = refusal(o, m, engine)
    if why is not None:
        raise UsageError(f"cannot make a template of {m.ref}: {why}")
    if engine.user_net is not None:
        guest_ports = [g for _, g in o.publish] or list(m.ports)
        nics = [Attachment("user", TEMPLATE_MAC, tuple((0, g) for g in guest_ports))]
    else:  # bridges of the host (refusal() allows them for this engine), as ``run`` plans
        from uniklab.lab import HOST_BRIDGE
        from uniklab.net.attach import NicRequest
        from uniklab.run_plan import host_bridges

        if o.publish:
            raise UsageError(f"a {engine.name} guest joins a bridge of {host.name}: no -p")
        nets = o.nets or (NicRequest(HOST_BRIDGE),)
        nics = host_bridges(nets, [template_mac(i) for i in range(len(nets))], [])
    req = BootRequest(
        name=m.name,
        args=list(o.args),
        env=dict(o.env or {}),
        disks=(),
        nics=tuple(nics),
        time_source=engine.user_net.time_source if engine.user_net else None,
        memory_mb=o.memory_mb if o.memory_mb is not None else validate.memory_mb(m.memory),
        vcpus=o.vcpus,
        rundir=root(lab.paths),
    )
    backend = lab.backend(engine.name, lab.images.kernel_path(m, engine.image_platform), host.name)
    return create(lab, m, engine, backend, req, timeout=o.timeout or 120.0, host=host.name)
