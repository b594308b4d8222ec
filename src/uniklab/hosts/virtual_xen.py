"""A virtual Xen host ("lab in a box", issue #4): Debian's real Xen under QEMU (TCG).

``up`` boots Xen 4.17 with a PV dom0 from ``uniklab.bake.dom0`` (the host's kernel, a
bash init, the Xen toolstack, sshd, dnsmasq on an internal bridge ``xenbr0``) and
returns once the Xen backend, over ssh to 127.0.0.1, reads the host's facts; ``down``
stops it.  The QEMU outlives the CLI, with a runtime directory like an instance's, and is
launched and stopped as the QEMU backend's guests are (``uniklab.backends.qemu_process``).
The CLI calls it ``uniklab lab``; on disk it lives under ``labs/<name>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from uniklab import buildcache, daemons, validate
from uniklab.backends import qemu_process, registry
from uniklab.backends.base import Backend
from uniklab.backends.qemu_argv import RunFiles, XenHostSpec, build_xenhost_argv
from uniklab.bake import dom0
from uniklab.errors import (
    LaunchError,
    NotFoundError,
    ProbeTimeoutError,
    UniklabError,
    UsageError,
)
from uniklab.executor import local
from uniklab.hosts.inventory import Host
from uniklab.hosts.ssh import SshExecutor
from uniklab.paths import Paths
from uniklab.ports import free_port

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NAME",
    "VirtualXenFiles",
    "VirtualXenHost",
    "VirtualXenStatus",
    "down",
    "ssh_argv",
    "status",
    "up",
]

DEFAULT_NAME = "xenlab"
UP_TIMEOUT = 180.0
_SSH_PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class VirtualXenHost:
    """What a caller needs to reach a running virtual Xen host over SSH (``Host`` fields)."""

    name: str
    ssh_target: str
    ssh_port: int
    identity_file: str
    known_hosts: str
    bmc: str | None = None
    hypervisor: str = "xen"
    libvirt: bool = False  # its dom0 runs libvirtd (the libxl driver)

    @property
    def libvirt_name(self) -> str:
        """The inventory name of the same host driven through libvirt."""
        return f"{self.name}-libvirt"

    def libvirt_uri(self) -> str:
        """libvirt's URI of the dom0's libvirtd.  The libssh transport, because it checks
        the host key against the lab's own known_hosts (the ssh transport's OpenSSH reads
        only the user's); proxy=native runs virt-ssh-helper there (the default probes for
        it with `which`, which the dom0 lacks)."""
        return (
            f"xen+libssh://{self.ssh_target}:{self.ssh_port}/system"
            f"?keyfile={self.identity_file}&known_hosts={self.known_hosts}"
            "&sshauth=privkey&proxy=native"
        )

    def libvirt_fields(self) -> dict[str, str | int]:
        """This virtual Xen host as the inventory's libvirt host: libvirt's URI, and SSH for
        what libvirt has no API for (consoles, addresses by MAC)."""
        return {
            **self.inventory_fields(),
            "name": self.libvirt_name,
            "hypervisor": "libvirt",
            "libvirt": self.libvirt_uri(),
        }

    def inventory_fields(self) -> dict[str, str | int]:
        """This virtual Xen host as the fields of an inventory ``Host``."""
        return {
            "name": self.name,
            "ssh": self.ssh_target,
            "port": self.ssh_port,
            "identity": str(self.identity_file),
            "known_hosts": str(self.known_hosts),
            "hypervisor": self.hypervisor,
        }


@dataclass(frozen=True)
class VirtualXenStatus:
    name: str
    running: bool
    pid: int | None
    ssh_port: int | None
    uptime: float | None
    rundir: str
    console_log: str


@dataclass(frozen=True)
class VirtualXenFiles:
    """Where one virtual Xen host keeps its keys, its dom0 initramfs, its record and
    runtime directory."""

    paths: Paths
    name: str

    @property
    def dir(self) -> Path:
        return self.paths.home / "labs" / self.name

    @property
    def identity(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def initrd(self) -> Path:
        return self.dir / "dom0.initrd"

    @property
    def record(self) -> Path:
        return self.dir / "lab.json"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def run(self) -> RunFiles:
        return RunFiles(self.dir / "run")


# ---------------------------------------------------------------- keys


def _ensure_key(path: Path, comment: str) -> str:
    """An ed25519 keypair at ``path`` (0600), made once; returns the public key line."""
    pub = path.with_name(path.name + ".pub")
    if not (path.is_file() and pub.is_file()):
        path.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        local.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
            timeout=30,
        )
    path.chmod(0o600)
    return pub.read_text().strip()


def executor(host: VirtualXenHost, *, connect_timeout: int = 5) -> SshExecutor:
    """The lab's dom0 as uniklab's SSH executor, checking its recorded host key."""
    return SshExecutor(
        Host.parse(host.inventory_fields()), connect_timeout=connect_timeout
    )


def ssh_argv(host: VirtualXenHost, remote: Sequence[str], *, connect_timeout: int = 5) -> list[str]:
    """ssh into the lab's dom0; ``remote`` is an argv."""
    return executor(host, connect_timeout=connect_timeout).ssh_argv(remote)


# ---------------------------------------------------------------- up / down / status


@contextlib.contextmanager
def _locked(files: VirtualXenFiles) -> Iterator[None]:
    files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(files.lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _read_record(files: VirtualXenFiles) -> dict[str, object] | None:
    try:
        doc: dict[str, object] = json.loads(files.record.read_text())
        return doc
    except (OSError, ValueError):
        return None


def _alive(files: VirtualXenFiles, rec: dict[str, object] | None) -> int | None:
    pid = rec.get("pid") if rec else None
    if isinstance(pid, int) and qemu_process.running(pid, files.run):
        return pid
    return None


def _host(files: VirtualXenFiles, port: int, *, libvirt: bool) -> VirtualXenHost:
    return VirtualXenHost(
        name=files.name,
        ssh_target="root@127.0.0.1",
        ssh_port=port,
        identity_file=str(files.identity),
        known_hosts=str(files.known_hosts),
        libvirt=libvirt,
    )


def _console_tail(files: VirtualXenFiles, lines: int = 30) -> str:
    return "\n".join(qemu_process.console(files.run).splitlines()[-lines:])


def up(
    paths: Paths,
    name: str = DEFAULT_NAME,
    *,
    timeout: float = UP_TIMEOUT,
    progress: buildcache.Progress = buildcache.quiet,
    libvirt: bool = False,
) -> VirtualXenHost:
    """Boot the virtual Xen host and wait until its Xen toolstack answers over ssh (the Xen
    backend reads the host's facts); one that already runs is returned as it is once it
    answers.  With ``libvirt`` its dom0 runs libvirtd (the libxl driver) too.  If a boot
    fails, its QEMU is stopped and its runtime directory removed.  ``progress`` hears each
    step."""
    validate.name(name, "lab name")
    paths.ensure()
    files = VirtualXenFiles(paths, name)
    with _locked(files):
        rec = _read_record(files)
        running = _alive(files, rec)
        if running is not None and rec is not None:
            log.info("lab %s already runs (pid %s)", name, running)
            host = _host(files, int(str(rec["ssh_port"])), libvirt=rec.get("libvirt") is True)
            if libvirt and not host.libvirt:
                raise UsageError(
                    f"lab {name} runs without libvirtd: `uniklab lab down --name {name}`, "
                    "then `lab up --libvirt`"
                )
            # It may still be booting (a `lab up` killed while it waited): wait the same.
            progress(f"already running (pid {running})")
            _wait_ready(files, host, running, time.monotonic() + timeout, progress)
            return host
        _cleanup(files, rec)  # debris of a lab that died or a killed `lab up`

        client_pub = _ensure_key(files.identity, f"uniklab@{name}")
        host_pub = _ensure_key(files.host_key, f"root@{name}")
        progress("making the dom0 image (Xen's packages, an initramfs)")
        image = dom0.bake(
            paths,
            hostname=name,
            authorized_key=client_pub + "\n",
            host_key=files.host_key,
            initrd=files.initrd,
            libvirt=libvirt,
        )
        port = free_port()
        # The key type and key, without the comment, for the port this boot listens on.
        key = " ".join(host_pub.split()[:2])
        files.known_hosts.write_text(f"[127.0.0.1]:{port} {key}\n")
        files.known_hosts.chmod(0o600)

        spec = XenHostSpec(
            name=name,
            xen=image.xen,
            xen_args=image.xen_args,
            dom0_kernel=image.kernel,
            dom0_args=image.kernel_args,
            dom0_initrd=image.initrd,
            rundir=files.run.rundir,
            ssh_port=port,
        )
        argv = build_xenhost_argv(spec)
        started = time.monotonic()
        pid: int | None = None
        try:
            progress("starting Xen and dom0 under QEMU")
            pid = qemu_process.launch(argv, files.run, timeout=60, what=" the lab")
            files.record.write_text(
                json.dumps(
                    {
                        "name": name,
                        "pid": pid,
                        "ssh_port": port,
                        "rundir": str(files.run.rundir),
                        "identity_file": str(files.identity),
                        "known_hosts": str(files.known_hosts),
                        "libvirt": libvirt,
                        "started": time.time(),
                    },
                    indent=1,
                )
            )
            host = _host(files, port, libvirt=libvirt)
            _wait_ready(files, host, pid, started + timeout, progress)
        except BaseException:
            _cleanup(files, {"pid": pid} if pid else None)
            raise
        log.info("lab %s up in %.1fs (ssh port %d)", name, time.monotonic() - started, port)
        return host


def _backends(files: VirtualXenFiles, host: VirtualXenHost) -> list[Backend]:
    """The backends of the lab's hypervisor (Xen), driving its dom0 over ssh: ``xl``'s, and
    libvirt's when its dom0 runs libvirtd."""
    ex = executor(host)
    entries = [ex.host]
    if host.libvirt:
        entries.append(Host.parse(host.libvirt_fields()))
    out = []
    for entry in entries:
        ctx = registry.BackendContext(host=entry, executor=ex, cache=files.paths.cache)
        out.append(registry.create(registry.for_host(entry).name, ctx))
    return out


def _wait_ready(
    files: VirtualXenFiles,
    host: VirtualXenHost,
    pid: int,
    deadline: float,
    progress: buildcache.Progress = buildcache.quiet,
) -> None:
    """Return once the lab's Xen toolstack answers its backends over ssh (their facts name
    the host's memory); raise if the QEMU exits first or the deadline passes."""
    engines = _backends(files, host)
    last = "no answer yet"
    while True:
        if not qemu_process.running(pid, files.run):
            raise LaunchError(
                "the lab's QEMU exited while booting", output=_console_tail(files, 60)
            )
        # Ask sshd only once the init says it started it: no futile handshakes under TCG.
        booted = dom0.READY_MARK in _console_tail(files, 400)
        progress("waiting for the Xen toolstack over ssh" if booted else "booting dom0")
        if booted:
            try:
                while engines:
                    facts = engines[0].facts(timeout=_SSH_PROBE_TIMEOUT)
                    if not facts.total_memory_mb:
                        last = f"{engines[0].name} answered without the host's memory"
                        break
                    engines.pop(0)
                if not engines:
                    return
            except UniklabError as exc:  # ssh not up yet, the toolstack not answering
                last = str(exc)
        if time.monotonic() >= deadline:
            raise ProbeTimeoutError(
                f"lab {files.name}: the Xen toolstack did not answer over ssh in time",
                last_error=last,
                console_tail=_console_tail(files),
            )
        time.sleep(1.0)


def _cleanup(files: VirtualXenFiles, rec: dict[str, object] | None) -> None:
    """Stop the host's QEMU (QMP quit, SIGTERM, SIGKILL) and remove its runtime state."""
    recorded = rec.get("pid") if rec else None
    # No record: a `lab up` killed between QEMU's start and the record; the pid file knows.
    pid = qemu_process.pid_of(files.run, recorded if isinstance(recorded, int) else None)
    try:
        if not qemu_process.shutdown(files.run, pid, ask_wait=5.0, grace=5.0):
            raise UniklabError(f"lab {files.name}: QEMU (pid {pid}) would not stop")
    finally:
        files.record.unlink(missing_ok=True)


def down(paths: Paths, name: str = DEFAULT_NAME) -> None:
    """Stop the virtual Xen host and remove its runtime directory and record (keys are
    kept)."""
    validate.name(name, "lab name")
    files = VirtualXenFiles(paths, name)
    if not files.dir.is_dir():
        raise NotFoundError(f"no lab named {name}")
    with _locked(files):
        rec = _read_record(files)
        if rec is None and not files.run.rundir.exists():
            raise NotFoundError(f"lab {name} is not up")
        _cleanup(files, rec)


def status(paths: Paths, name: str = DEFAULT_NAME) -> VirtualXenStatus:
    validate.name(name, "lab name")
    files = VirtualXenFiles(paths, name)
    rec = _read_record(files)
    pid = _alive(files, rec)
    info = daemons.info(pid) if pid else None
    port = rec.get("ssh_port") if rec else None
    return VirtualXenStatus(
        name=name,
        running=pid is not None,
        pid=pid,
        ssh_port=port if isinstance(port, int) else None,
        uptime=info.uptime if info else None,
        rundir=str(files.run.rundir),
        console_log=str(files.run.console_log),
    )
