"""The libvirt backend: guests as transient domains of a libvirt daemon, on this machine
(``qemu:///system``) or a lab host (``qemu+ssh://root@h/system``), through libvirt's own
Python bindings.  Its QEMU driver boots the images made for QEMU (on ``pc``); its Xen
(libxl) driver, on a dom0 (``xen+ssh://root@h/system``), boots those made for Xen as PV
domains on a bridge of the dom0, as the ``xen`` backend does with ``xl``.

Everyone in the lab sees uniklab's guests with ``virsh list``; each domain carries
uniklab's labels in its ``<metadata>`` (the home's owner tag, the instance, the image), so
``gc`` takes only what its home made.  Images reach the host once, as content-addressed
volumes of a storage pool (libvirt's QEMU runs as another user and cannot read a home), are
verified by digest after upload, and are reused by every later guest.

A transient domain is gone once it ends (the init reboots when its app exits; libvirt's
``destroy`` kills it), so ``inspect`` has no "stopped" domain to see: gone is ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from uniklab import consoles
from uniklab.backends import libvirt_xml
from uniklab.backends.base import (
    Backend,
    Check,
    ConsoleAccess,
    Handle,
    HostFacts,
    Inspection,
    InstanceSpec,
    Owned,
    UserNet,
    owner_tag,
)
from uniklab.backends.registry import BackendContext, BackendType
from uniklab.digest import sha256_file
from uniklab.errors import (
    ConflictError,
    HostUnreachableError,
    LaunchError,
    NotFoundError,
    UniklabError,
)
from uniklab.executor import Executor
from uniklab.guest import console as guest_console

if TYPE_CHECKING:
    import libvirt as libvirt_t

    from uniklab.hosts.inventory import Host

log = logging.getLogger(__name__)

POOL = "uniklab"
POOL_DIR = "/var/lib/libvirt/images/uniklab"
CONSOLE_DIR = "/var/log/libvirt/qemu"
XEN_CONSOLE_DIR = "/var/log/xen/console"  # xenconsoled --log=guest: guest-NAME.log
FOLLOW_POLL = 0.5  # seconds between two reads of a remote console log's new bytes
STOP_POLL = 0.2
POWEROFF_WAIT = 5.0  # after a stop's timeout: the init's SIGKILL, then its power-off
CONNECT_WAIT = 30.0  # seconds a connection may take to open (ssh's connect, the daemon's hello)
# Keepalive: a connection whose host says nothing for INTERVAL * (COUNT + 1) s is closed,
# and the calls waiting on it fail.  Not short: a dom0 under TCG that is busy writing an
# upload left 15 s unanswered (5 s x 2 closed it mid-upload on the virtual Xen host).
KEEPALIVE = (10, 5)
UPLOAD_WAIT = 60.0  # seconds to wait for another command's upload of the same volume
# An upload's bound: this much, plus its size at this rate (a remote host over a slow link).
UPLOAD_BASE = 60.0
UPLOAD_RATE = 1 << 20  # bytes per second, at least
CLEANUP_WAIT = 30.0  # for undoing a stopped upload (the host may still not answer)
# QEMU's slirp addresses, as on the QEMU backend.  No time service: libvirt runs QEMU
# under a seccomp sandbox that forbids guestfwd's `cmd:` (QEMU would be killed), so a
# guest here keeps its RTC's time.
USER_NET = UserNet(guest="10.0.2.15", prefix=24, gateway="10.0.2.2", dns="10.0.2.3")

_STATES = {  # virDomainState
    1: "running",  # RUNNING
    2: "running",  # BLOCKED
    3: "paused",  # PAUSED
    4: "running",  # SHUTDOWN: shutting down
    5: "stopped",  # SHUTOFF
    6: "stopped",  # CRASHED
    7: "paused",  # PMSUSPENDED
}


_EVENTS = threading.Lock()


def _lib() -> Any:
    """The libvirt bindings, imported on first use (a command without libvirt hosts never
    pays for them) with libvirt's own printing of errors to stderr turned off, and its
    event loop running in a daemon thread: without one, no keepalive runs, and a call to
    a host that stopped answering would wait for ever."""
    import libvirt

    with _EVENTS:
        if not any(t.name == "libvirt-events" for t in threading.enumerate()):
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_events, name="libvirt-events", daemon=True).start()
    return libvirt


def _run_events() -> None:
    import libvirt

    while True:
        libvirt.virEventRunDefaultImpl()


def explain(exc: Exception, where: str) -> UniklabError:
    """One line that says what to do, for an error of the libvirt bindings."""
    message = exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)
    message = (message or str(exc)).strip().splitlines()[0] if message else str(exc)
    if "virtlogd-sock" in message:
        return HostUnreachableError(
            f"{where}: virtlogd is not running: start it (systemctl start virtlogd, or virtlogd -d)"
        )
    if "Failed to connect socket" in message or "libvirt-sock" in message:
        return HostUnreachableError(
            f"{where}: libvirtd is not running: start it (systemctl start libvirtd, or libvirtd -d)"
        )
    if "already exists" in message and "domain" in message:
        return ConflictError(
            f"{where}: {message} (a guest of another home or user: choose another --name)"
        )
    if "Permission denied" in message:
        return LaunchError(f"{where}: {message} (libvirt's QEMU cannot read that file)")
    lib = _lib()
    if hasattr(exc, "get_error_domain") and exc.get_error_domain() == lib.VIR_FROM_RPC:
        # The connection itself failed: keepalive's timeout, the host's end closed.
        return HostUnreachableError(f"{where}: {message} (the host stopped answering)")
    return UniklabError(f"{where}: {message}")


def gone_from_xen(exc: Exception) -> bool:
    """Whether a libvirt error says Xen no longer has a domain that libvirt's libxl
    driver still counts as running: a destroy in progress (the driver lets go of the
    domain's lock while libxl tears it down) or an end it has yet to process.  Its
    info and memory calls then fail as an internal error; the domain is gone."""
    lib = _lib()
    return (
        isinstance(exc, lib.libvirtError)
        and exc.get_error_code() == lib.VIR_ERR_INTERNAL_ERROR
        and "libxl_domain_info failed" in (exc.get_error_message() or "")
    )


class Bounded:
    """A call that may block in libvirt's C code for as long as its host does not answer
    (no keepalive runs without an event loop), in a daemon thread of its own that a caller
    waits for with a timeout; left behind if it does not end, it never holds up the
    process's exit."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.failed: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # handed to the waiting thread
                self.failed.append(exc)

        self.thread = threading.Thread(target=run, name="libvirt-call", daemon=True)
        self.thread.start()

    def wait(self, timeout: float, what: str) -> None:
        """Its end, or ``HostUnreachableError`` after ``timeout``; its error is raised here."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise HostUnreachableError(
                f"{what} did not finish within {timeout:.0f} s (the host stopped answering)"
            )
        if self.failed:
            raise self.failed[0]


def bounded(call: Callable[[], object], timeout: float, what: str) -> None:
    """``call()``, waited for at most ``timeout`` seconds (``Bounded``)."""
    Bounded(call).wait(timeout, what)


def is_remote(uri: str) -> bool:
    return bool(urlsplit(uri).hostname)


def driver_of(uri: str) -> str:
    """The hypervisor driver a URI names: ``qemu``, ``xen``, ``test``."""
    return urlsplit(uri).scheme.partition("+")[0]


class LibvirtBackend(Backend):
    name = "libvirt"

    def __init__(
        self, uri: str, executor: Executor, *, kvm: bool, keepalive: tuple[int, int] = KEEPALIVE
    ) -> None:
        self.uri = uri
        self.keepalive = keepalive  # (interval, count): libvirt's setKeepAlive
        self.ex = executor  # the host's shell: reads console logs libvirt has no API for
        self.kvm = kvm
        self.xen = driver_of(uri) == "xen"
        self._conn: libvirt_t.virConnect | None = None
        self._lock = threading.Lock()

    # -- the connection ----------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.ex.name} ({self.uri})"

    def conn(self) -> libvirt_t.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                opened: list[libvirt_t.virConnect] = []
                try:
                    bounded(
                        lambda: opened.append(_lib().open(self.uri)),
                        CONNECT_WAIT,
                        f"{self.where}: connecting",
                    )
                    opened[0].setKeepAlive(*self.keepalive)
                except UniklabError:
                    raise
                except Exception as exc:
                    raise explain(exc, self.where) from None
                self._conn = opened[0]
            return self._conn

    def _domain(self, handle: Handle) -> libvirt_t.virDomain | None:
        """The very domain created for ``handle`` (by UUID: a name may be taken again)."""
        uuid = handle.runtime.get("uuid")
        lib = _lib()
        try:
            if uuid:
                return self.conn().lookupByUUIDString(str(uuid))
            return self.conn().lookupByName(self.key(handle))
        except lib.libvirtError as exc:
            if exc.get_error_code() == lib.VIR_ERR_NO_DOMAIN:
                return None
            raise explain(exc, self.where) from None

    # -- images on the host ------------------------------------------------------------
    def _pool(self) -> libvirt_t.virStoragePool:
        lib = _lib()
        conn = self.conn()
        try:
            pool = conn.storagePoolLookupByName(POOL)
        except lib.libvirtError as exc:
            if exc.get_error_code() != lib.VIR_ERR_NO_STORAGE_POOL:
                raise explain(exc, self.where) from None
            xml = (
                f"<pool type='dir'><name>{POOL}</name>"
                f"<target><path>{POOL_DIR}</path></target></pool>"
            )
            try:
                pool = conn.storagePoolDefineXML(xml, 0)
                pool.build(0)
                pool.setAutostart(1)
            except lib.libvirtError as exc2:
                # Another command defined it meanwhile.
                try:
                    pool = conn.storagePoolLookupByName(POOL)
                except lib.libvirtError:
                    raise explain(exc2, self.where) from None
        if not pool.isActive():
            try:
                pool.create(0)
            except lib.libvirtError as exc:
                if not pool.isActive():
                    raise explain(exc, self.where) from None
        return pool

    def _lookup(self, pool: libvirt_t.virStoragePool, name: str) -> Any:
        lib = _lib()
        try:
            return pool.storageVolLookupByName(name)
        except lib.libvirtError as exc:
            if exc.get_error_code() == lib.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise explain(exc, self.where) from None

    def _digest_there(self, vol: Any) -> str:
        """The sha256 of a volume, computed on its host (through the host's shell).  Not a
        download through the connection: a stream read of a remote volume can block for
        ever in C, where no timeout or signal reaches it (seen on the libssh transport to
        the virtual Xen host), and it moves the whole file back."""
        r = self.ex.run(["sha256sum", "--", vol.path()], timeout=120, check=False)
        return r.stdout.split()[0] if r.returncode == 0 and r.stdout else ""

    def _upload(
        self, pool: libvirt_t.virStoragePool, name: str, path: Path, timeout: float | None = None
    ) -> Any:
        """``path`` as the new volume ``name``, within ``timeout`` (default: by its size,
        ``UPLOAD_BASE`` + size at ``UPLOAD_RATE``); on any failure, the half-made volume
        goes again."""
        size = path.stat().st_size
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
            "<target><format type='raw'/><permissions><mode>0644</mode></permissions>"
            "</target></volume>"
        )
        made: list[Any] = []  # the volume, once the host has made it
        stopped = threading.Event()

        def chunk(_stream: object, n: int, f: BinaryIO) -> bytes:
            if stopped.is_set():  # sendAll then aborts the stream, in its own thread
                raise UniklabError("upload stopped")
            return f.read(n)

        def send() -> None:  # every call to the host in here, bounded as one
            made.append(pool.createXML(xml, 0))
            if stopped.is_set():
                return
            stream = self.conn().newStream(0)
            made[0].upload(stream, 0, size, 0)
            with path.open("rb") as f:
                stream.sendAll(chunk, f)
            stream.finish()

        limit = timeout if timeout is not None else UPLOAD_BASE + size / UPLOAD_RATE
        upload = Bounded(send)
        try:
            upload.wait(limit, f"{self.where}: the upload of {path.name} ({size} bytes)")
        except BaseException:
            # Undone once the host answers again (libvirt keeps a volume being written).
            stopped.set()
            upload.thread.join(CLEANUP_WAIT)
            if not made:  # the host never made it (or has not answered since)
                raise
            vol = made[0]
            deadline = time.monotonic() + CLEANUP_WAIT
            while True:  # refused while the daemon still finishes the aborted stream
                try:
                    bounded(lambda: vol.delete(0), CLEANUP_WAIT, f"{self.where}: removing {name}")
                    break
                except Exception as exc:  # the upload's own error is the one raised
                    if time.monotonic() > deadline:
                        log.info("%s", exc)
                        break
                time.sleep(1)
            raise
        return made[0]

    def ensure_image(self, *files: Path) -> tuple[libvirt_xml.Volume, ...]:
        """Each file as a volume of the pool named by its sha256, uploaded once and
        verified there; ``NAME.ok`` marks a verified volume (libvirt cannot rename one)."""
        lib = _lib()
        pool = self._pool()
        out = []
        for path in files:
            digest = sha256_file(path)
            name = f"sha256-{digest}"
            vol = self._lookup(pool, name)
            if vol is None or self._lookup(pool, f"{name}.ok") is None:
                try:
                    if vol is None:
                        vol = self._upload(pool, name, path)
                    got = self._digest_there(vol)
                    if got != digest:
                        vol.delete(0)
                        raise UniklabError(
                            f"{self.where}: the copy of {path.name} failed verification"
                        )
                    marker = f"<volume><name>{name}.ok</name><capacity>0</capacity></volume>"
                    pool.createXML(marker, 0)
                except lib.libvirtError as exc:
                    if exc.get_error_code() != lib.VIR_ERR_STORAGE_VOL_EXIST:
                        raise explain(exc, self.where) from None
                    self._await_upload(pool, name)  # another command's upload
                    vol = self._lookup(pool, name)
            out.append(libvirt_xml.Volume(path=vol.path()))
        return tuple(out)

    def _await_upload(self, pool: libvirt_t.virStoragePool, name: str) -> None:
        deadline = time.monotonic() + UPLOAD_WAIT
        while self._lookup(pool, f"{name}.ok") is None:
            if time.monotonic() > deadline:
                raise UniklabError(
                    f"{self.where}: volume {name} is still being uploaded by another command"
                )
            time.sleep(0.2)
            pool.refresh(0)

    # -- the Backend protocol ----------------------------------------------------------
    def _console_log(self, name: str) -> str:
        if self.xen:
            return f"{XEN_CONSOLE_DIR}/guest-{name}.log"
        return f"{CONSOLE_DIR}/{name}.console.log"

    def create(self, spec: InstanceSpec) -> Handle:
        if spec.rumprun is not None:
            raise LaunchError(
                f"{spec.name}: rumprun images run on the qemu and xen backends, not libvirt"
            )
        if self.xen:
            return self._start(spec, self._xen_domain(spec))
        if spec.initrd is None or not spec.acpi:
            raise LaunchError(
                f"{spec.name}: libvirt boots pc machines (virtio-pci): this image's kernel is "
                "specialised for QEMU's microvm; bake one with the host kernel "
                "(uniklab bake RECIPE --kernel host --root initramfs)"
            )
        if spec.netns:
            raise LaunchError(f"{spec.name}: libvirt's QEMU cannot join network namespace")
        if is_remote(self.uri) and any(n.kind == "user" for n in spec.nics):
            raise LaunchError(
                f"{spec.name}: a guest on {self.ex.name} publishes no ports here: "
                "give --net BRIDGE (a bridge there)"
            )
        return self._start(spec, self._domain_spec(spec, "ttyS0", kvm=self.kvm))

    def _domain_spec(
        self, spec: InstanceSpec, console: str, *, kvm: bool = False, xen: bool = False
    ) -> libvirt_xml.DomainSpec:
        """The domain of ``spec``, its kernel and initrd as volumes on the host."""
        assert spec.initrd is not None
        kernel, initrd = self.ensure_image(spec.kernel, spec.initrd)
        return libvirt_xml.DomainSpec(
            name=spec.name,
            memory_mb=spec.memory_mb,
            vcpus=spec.vcpus,
            kernel=kernel,
            initrd=initrd,
            cmdline=f"console={console} {spec.cmdline}",
            console_log=self._console_log(spec.name),
            labels=libvirt_xml.Labels(owner=owner_tag(spec.rundir.parent), key=spec.name),
            kvm=kvm,
            xen=xen,
            nics=spec.nics,
        )

    def _xen_domain(self, spec: InstanceSpec) -> libvirt_xml.DomainSpec:
        """A PV domain of the libxl driver, as the xen backend's xl config of the image."""
        if spec.initrd is None:
            raise LaunchError("a Xen guest boots from an initrd: a --root image runs on QEMU only")
        if spec.volumes or spec.disks:
            raise LaunchError(f"{spec.name}: disks go with QEMU guests (and xl's) for now")
        if not spec.nics or any(n.kind != "host-bridge" or not n.bridge for n in spec.nics):
            raise LaunchError(
                f"{spec.name}: a Xen guest's NIC joins a bridge of its dom0 (--net BRIDGE)"
            )
        return self._domain_spec(spec, "hvc0", xen=True)

    def _start(self, spec: InstanceSpec, domain: libvirt_xml.DomainSpec) -> Handle:
        xml = libvirt_xml.render(domain)
        console_log = domain.console_log
        try:
            dom = self.conn().createXML(xml, 0)
        except _lib().libvirtError as exc:
            raise explain(exc, f"{spec.name} on {self.where}") from None
        return Handle(
            pid=None,
            runtime={
                "domain": spec.name,
                "uuid": dom.UUIDString(),
                "console": console_log,
                "started": time.time(),
            },
            name=spec.name,
        )

    def inspect(self, handle: Handle, *, net: bool = False) -> Inspection:
        dom = self._domain(handle)
        gone = f"domain {self.key(handle)} is gone from {self.where}"
        if dom is None:
            return Inspection(alive=False, state="gone", detail=gone)
        lib = _lib()
        try:
            state_code, _reason = dom.state()
            info = dom.info()
            stats = self._memory_stats(dom)
        except lib.libvirtError as exc:
            if exc.get_error_code() == lib.VIR_ERR_NO_DOMAIN:
                return Inspection(alive=False, state="gone", detail=gone)
            if gone_from_xen(exc):
                return Inspection(alive=False, state="gone", detail=f"{gone} (Xen ended it)")
            raise explain(exc, self.where) from None
        state = _STATES.get(state_code, "running")
        started = handle.runtime.get("started")
        return Inspection(
            alive=state != "stopped",
            state=state,
            uptime=time.time() - float(str(started)) if started else None,
            cpu_seconds=info[4] / 1e9,
            rss_bytes=int(stats["rss"]) * 1024 if "rss" in stats else None,
            detail="" if state != "stopped" else f"domain {self.key(handle)} is shut off",
            **(self._net_bytes(dom) if net and state != "stopped" else {}),
        )

    def _net_bytes(self, dom: libvirt_t.virDomain) -> dict[str, int | None]:
        """The domain's NIC byte counters, from its side (libvirt swaps a tap's), summed
        over the NICs libvirt knows; a user-mode NIC given as QEMU's own arguments has no
        device libvirt can ask: None."""
        lib = _lib()
        try:
            root = ET.fromstring(dom.XMLDesc(0))
            devs = [t.get("dev") for t in root.iterfind("devices/interface/target")]
            counts = [dom.interfaceStats(d) for d in devs if d]
        except (lib.libvirtError, ET.ParseError) as exc:
            log.debug("%s: NIC counters of %s: %s", self.where, dom.name(), exc)
            return {}
        if not counts:
            return {"net_rx_bytes": None, "net_tx_bytes": None}
        return {
            "net_rx_bytes": sum(c[0] for c in counts),
            "net_tx_bytes": sum(c[4] for c in counts),
        }

    def _memory_stats(self, dom: libvirt_t.virDomain) -> dict[str, int]:
        lib = _lib()
        if not dom.isActive():
            return {}
        try:
            stats: dict[str, int] = dom.memoryStats()
            return stats
        except lib.libvirtError as exc:
            if exc.get_error_code() in (lib.VIR_ERR_NO_SUPPORT, lib.VIR_ERR_OPERATION_INVALID):
                return {}
            raise

    def console(self, handle: Handle) -> str:
        path = handle.runtime.get("console") or self._console_log(self.key(handle))
        return self.ex.run(["cat", str(path)], timeout=30, check=False).stdout

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        dom = self._domain(handle)
        if dom is not None:
            self._destroy(dom)
        path = handle.runtime.get("console") or self._console_log(self.key(handle))
        self.ex.run(["rm", "-f", "--", str(path)], timeout=30, check=False)

    def _destroy(self, dom: libvirt_t.virDomain) -> None:
        lib = _lib()
        try:
            dom.destroy()
        except lib.libvirtError as exc:
            # One that ended meanwhile is what was asked for.
            if exc.get_error_code() not in (lib.VIR_ERR_NO_DOMAIN, lib.VIR_ERR_OPERATION_INVALID):
                raise explain(exc, self.where) from None

    def follow(self, handle: Handle, *, lines: int | None = None) -> Generator[str, None, None]:
        """The console log as it grows, until the domain is gone: on this machine the file
        held open (``consoles.follow_file``); on a remote host only its new bytes, asked
        for every ``FOLLOW_POLL`` seconds over the host's shared SSH connection."""
        path = str(handle.runtime.get("console") or self._console_log(self.key(handle)))
        alive = lambda: self.inspect(handle).alive  # noqa: E731
        if not is_remote(self.uri):
            return consoles.follow_file(Path(path), alive, lines=lines)
        return consoles.decoded(self._tail_remote(path, alive, lines))

    def _tail_remote(
        self, path: str, alive: Callable[[], bool], lines: int | None
    ) -> Generator[bytes, None, None]:
        text = self.ex.run(["cat", "--", path], timeout=30, check=False).stdout
        start = len(text.encode())
        yield consoles.last_lines(text, lines).encode()
        while True:
            going = alive()
            got = self.ex.run(
                ["tail", "-c", f"+{start + 1}", "--", path], timeout=30, check=False
            ).stdout.encode()
            start += len(got)
            if got:
                yield got
            if not going:
                return
            time.sleep(FOLLOW_POLL)

    def attach(self, handle: Handle) -> ConsoleAccess:
        """`virsh console` here, through the same URI (its escape is ^] too); libvirt lets
        one console session in at a time and says so."""
        return ConsoleAccess(argv=("virsh", "-c", self.uri, "console", self.key(handle)))

    def _live(self, handle: Handle) -> libvirt_t.virDomain:
        dom = self._domain(handle)
        if dom is None:
            raise NotFoundError(f"{handle.name or 'the guest'} is not running")
        return dom

    def pause(self, handle: Handle) -> None:
        try:
            self._live(handle).suspend()
        except _lib().libvirtError as exc:
            raise explain(exc, self.where) from None

    def resume(self, handle: Handle) -> None:
        try:
            self._live(handle).resume()
        except _lib().libvirtError as exc:
            raise explain(exc, self.where) from None

    def stop(self, handle: Handle, *, timeout: float) -> int | None:
        """Tell the init (a Linux image: SIGTERM to the app, SIGKILL after ``timeout``, then
        power off): on the QEMU driver a control line through libvirt's console stream,
        again every second until the init says it heard; on the Xen driver a PV shutdown
        request (the guest kernel runs /sbin/poweroff, which is that init).  Destroyed
        hard once ``timeout`` (and the power-off's moment) has passed.  The domain is
        transient: it is gone afterwards; its console log stays for ``start`` and ``logs``."""
        dom = self._domain(handle)
        if dom is None:
            return None
        lib = _lib()
        seen = len(self.console(handle))
        start = time.monotonic()
        deadline = start + timeout + POWEROFF_WAIT
        try:
            if dom.state()[0] == lib.VIR_DOMAIN_PAUSED:
                dom.resume()  # a frozen guest hears nothing
            if self.xen:
                dom.shutdown()
        except lib.libvirtError as exc:
            log.info("%s: asking %s to stop: %s", self.where, self.key(handle), exc)
        stream = None if self.xen else self._console_stream(dom)
        heard = stream is None
        sent_at = -1.0
        try:
            while self.inspect(handle).alive and time.monotonic() < deadline:
                now = time.monotonic() - start
                if not heard:
                    heard = guest_console.STOP_HEARD in self.console(handle)[seen:]
                if not heard and stream is not None and now - sent_at >= 1.0:
                    left = str(math.ceil(max(0.0, timeout - now)))
                    stream.send(guest_console.control_line("stop", left))
                    sent_at = now
                time.sleep(STOP_POLL)
        except lib.libvirtError as exc:  # the console closed: the guest is ending
            log.debug("%s: console of %s: %s", self.where, self.key(handle), exc)
        finally:
            if stream is not None:
                with contextlib.suppress(lib.libvirtError):
                    stream.abort()
        if self._domain(handle) is not None:
            self._destroy(dom)
        return guest_console.app_exit_status(self.console(handle)[seen:])

    def _console_stream(self, dom: libvirt_t.virDomain) -> Any:
        """A libvirt stream into the domain's serial console, held while a stop talks to
        the init (what a stream closed at once has not delivered is lost); None when
        another session holds the console (not forced: an attached `virsh console` keeps
        its session, and the stop then ends at its timeout)."""
        lib = _lib()
        stream = self.conn().newStream(0)
        try:
            dom.openConsole(None, stream, 0)
        except lib.libvirtError as exc:
            log.info("%s: console of %s: %s", self.where, dom.name(), exc)
            with contextlib.suppress(lib.libvirtError):
                stream.abort()
            return None
        return stream

    # -- networks on the host ------------------------------------------------------------
    def host_networks(self) -> dict[str, str]:
        """The host's active libvirt networks (its own ``default`` included): name → bridge;
        none where its libvirtd has no network driver (the lab's dom0: bridges only)."""
        lib = _lib()
        try:
            active = self.conn().listAllNetworks(lib.VIR_CONNECT_LIST_NETWORKS_ACTIVE)
            return {n.name(): n.bridgeName() for n in active}
        except lib.libvirtError as exc:
            if exc.get_error_code() == lib.VIR_ERR_NO_SUPPORT:
                return {}
            raise explain(exc, self.where) from None

    def create_network(self, spec: libvirt_xml.NetworkSpec) -> str:
        """Network ``spec`` made and started there (transient: gone when removed, or when
        the host restarts, like a uniklab bridge); its bridge's name."""
        lib = _lib()
        try:
            self.conn().networkLookupByName(spec.name)
        except lib.libvirtError as exc:
            if exc.get_error_code() != lib.VIR_ERR_NO_NETWORK:
                raise explain(exc, self.where) from None
        else:
            raise ConflictError(f"{self.where}: a libvirt network named {spec.name!r} exists")
        try:
            net = self.conn().networkCreateXML(libvirt_xml.render_network(spec))
            return str(net.bridgeName())
        except lib.libvirtError as exc:
            raise explain(exc, f"network {spec.name} on {self.where}") from None

    def _network(self, name: str) -> Any:
        lib = _lib()
        try:
            return self.conn().networkLookupByName(name)
        except lib.libvirtError as exc:
            if exc.get_error_code() == lib.VIR_ERR_NO_NETWORK:
                raise NotFoundError(f"no libvirt network {name} on {self.where}") from None
            raise explain(exc, self.where) from None

    def network_owner(self, name: str) -> str | None:
        """The owner tag of network ``name`` (None: not uniklab's)."""
        try:
            return libvirt_xml.network_owner(self._network(name).XMLDesc(0))
        except _lib().libvirtError as exc:
            raise explain(exc, self.where) from None

    def remove_network(self, name: str, owner: str) -> None:
        """Network ``name``, if the home ``owner`` made it (never the host's own)."""
        if self.network_owner(name) != owner:
            raise ConflictError(
                f"libvirt network {name} on {self.where} is not this home's: not removed"
            )
        net = self._network(name)
        lib = _lib()
        try:
            if net.isActive():
                net.destroy()
            if net.isPersistent():
                net.undefine()
        except lib.libvirtError as exc:
            if exc.get_error_code() != lib.VIR_ERR_NO_NETWORK:
                raise explain(exc, self.where) from None

    def lease(self, network: str, mac: str) -> str | None:
        """The address libvirt's dnsmasq leased to ``mac`` on ``network`` (None: none)."""
        lib = _lib()
        try:
            leases = self._network(network).DHCPLeases(mac.lower(), 0)
        except lib.libvirtError as exc:
            raise explain(exc, self.where) from None
        ours = [x for x in leases if x.get("type") == lib.VIR_IP_ADDR_TYPE_IPV4]
        return str(max(ours, key=lambda x: x.get("expirytime", 0))["ipaddr"]) if ours else None

    # -- what gc, placement and doctors ask --------------------------------------------
    def key(self, handle: Handle) -> str:
        return str(handle.runtime.get("domain") or handle.name)

    def _labelled(self) -> Iterator[tuple[libvirt_t.virDomain, libvirt_xml.Labels]]:
        lib = _lib()
        try:
            domains = self.conn().listAllDomains(0)
        except lib.libvirtError as exc:
            raise explain(exc, self.where) from None
        for dom in domains:
            try:
                meta = dom.metadata(lib.VIR_DOMAIN_METADATA_ELEMENT, libvirt_xml.NS, 0)
            except lib.libvirtError:
                continue  # no uniklab metadata: not ours
            labels = libvirt_xml.labels_of(meta)
            if labels is not None:
                yield dom, labels

    def owned(self, run_root: Path, *, timeout: float = 30.0) -> list[Owned]:
        """The domains labelled with this home's owner tag, live (transient domains do
        not outlive their guest)."""
        owner = owner_tag(run_root)
        return [
            Owned("domain", dom.name(), labels.key, f"domain {dom.ID()} on {self.where}", dom.ID())
            for dom, labels in self._labelled()
            if labels.owner == owner
        ]

    def remove(self, item: Owned, *, timeout: float = 30.0) -> None:
        """That very domain (by id, and still labelled as found), and its console log."""
        for dom, labels in self._labelled():
            if dom.ID() == item.ident and labels.key == item.key:
                self._destroy(dom)
        self.ex.run(["rm", "-f", "--", self._console_log(item.key)], timeout=30, check=False)

    def facts(self, *, timeout: float = 30.0) -> HostFacts:
        lib = _lib()
        try:
            conn = self.conn()
            free = conn.getFreeMemory() // 2**20
            info = conn.getInfo()
            version = conn.getLibVersion()
            driver = conn.getType()
        except lib.libvirtError as exc:
            raise explain(exc, self.where) from None
        v = f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
        accel = "PV" if self.xen else "KVM" if self.kvm else "TCG"
        return HostFacts(
            free_memory_mb=int(free),
            total_memory_mb=int(info[1]) or None,
            detail=f"libvirt {v}, {driver} driver ({accel})",
        )

    def doctor(self, *, bridge: str | None = None) -> list[Check]:
        checks = []
        try:
            _lib()
            checks.append(Check("libvirt-python installed", True, "importable"))
        except ImportError:
            fix = "apt-get install -y libvirt-dev pkg-config && pip install 'uniklab[libvirt]'"
            return [Check("libvirt-python installed", False, "not importable", fix)]
        try:
            facts = self.facts()
            checks.append(Check(f"libvirt at {self.uri}", True, facts.detail))
        except UniklabError as exc:
            fix = "apt-get install -y libvirt-daemon-system; systemctl start libvirtd virtlogd"
            return [*checks, Check(f"libvirt at {self.uri}", False, str(exc), fix)]
        try:
            self._pool()
            checks.append(Check(f"storage pool {POOL}", True, POOL_DIR))
        except UniklabError as exc:
            checks.append(Check(f"storage pool {POOL}", False, str(exc), f"mkdir -p {POOL_DIR}"))
        if bridge:
            r = self.ex.run(["test", "-d", f"/sys/class/net/{bridge}/bridge"], check=False)
            checks.append(
                Check(
                    f"bridge {bridge}",
                    r.returncode == 0,
                    "present" if r.returncode == 0 else "missing",
                    f"ip link add {bridge} type bridge && ip link set {bridge} up",
                )
            )
        return checks


def _unavailable() -> str | None:
    try:
        _lib()
    except ImportError:
        return "libvirt-python is not installed (pip install 'uniklab[libvirt]')"
    return None


def _create(ctx: BackendContext) -> LibvirtBackend:
    uri = ctx.host.libvirt or "qemu:///system"
    if driver_of(uri) == "xen":
        return LibvirtBackend(uri, ctx.executor, kvm=False)
    if is_remote(uri):
        kvm = False
        try:
            caps = (
                LibvirtBackend(uri, ctx.executor, kvm=False)
                .conn()
                .getDomainCapabilities(None, "x86_64", None, "kvm", 0)
            )
            kvm = "<domain>kvm</domain>" in caps
        except Exception:  # no KVM there (or no answer: asked again at create)
            kvm = False
    else:
        from uniklab.backends import hostinfo

        kvm = hostinfo.choose_accel(ctx.kernel)[0] == "kvm"
    return LibvirtBackend(uri, ctx.executor, kvm=kvm)


def _for_host(host: Host) -> BackendType:
    """libvirt's Xen driver runs Xen's images, each guest on a bridge of the dom0 (there is
    no user-mode network on Xen); its QEMU driver runs QEMU's."""
    return BACKEND_XEN if driver_of(host.libvirt or "") == "xen" else BACKEND


BACKEND = BackendType(
    name="libvirt",
    factory=_create,
    user_net=USER_NET,
    local_only=False,
    unavailable=_unavailable,
    platform="qemu",
    variant=_for_host,
)
# The same engine on libvirt's Xen driver: Xen's images, and no user-mode network.
BACKEND_XEN = dataclasses.replace(BACKEND, user_net=None, platform="xen", variant=None)
