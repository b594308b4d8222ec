"""The QEMU backend: each guest is a detached QEMU that outlives the CLI.

Its runtime directory holds the pid file, the QMP socket, the console socket and log.
Launch errors (a port already bound, a bad option) are reported by QEMU before it
daemonizes, so ``create`` either returns a running guest or raises with QEMU's words.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import time
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from uniklab import channels, consoles, daemons, faults
from uniklab.backends import hostinfo, netdev, qemu_process, qmp
from uniklab.backends.base import (
    Backend,
    Check,
    ConsoleAccess,
    Handle,
    HostFacts,
    Inspection,
    InstanceSpec,
    Owned,
)
from uniklab.backends.qemu_argv import USER_NET, RunFiles, build_argv
from uniklab.backends.registry import BackendContext, BackendType
from uniklab.bake.kernel_choice import host_kernel
from uniklab.errors import ConflictError, LaunchError, NotFoundError, UniklabError, UsageError
from uniklab.executor import Executor, local
from uniklab.guest import console as guest_console
from uniklab.net import netns

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

log = logging.getLogger(__name__)

# sun_path is 108 bytes; keep a margin.
MAX_SOCKET_PATH = 100
# stop: how long a Linux guest's init may take to power off after the app's deadline, and
# how long a rumprun guest gets to answer ACPI's power button.
POWEROFF_WAIT = 5.0
POWERDOWN_WAIT = 2.0
# A template directory's files (see save_template): the guest's RAM, the rest of its
# state (QEMU's migration stream without that RAM), what restoring needs, its boot's log.
TEMPLATE_RAM = "memory"
TEMPLATE_STATE = "state"
TEMPLATE_INFO = "qemu.json"
TEMPLATE_CONSOLE = "console.log"
SAVE_TIMEOUT = 60.0
RESTORE_TIMEOUT = 30.0
# How long a clone's init has to acknowledge "restored" (it runs at once: the line is
# sent again every RESTORED_EVERY seconds in case the UART dropped it).
RESTORED_WAIT = 10.0
RESTORED_EVERY = 0.5


class QemuBackend(Backend):
    name = "qemu"

    def __init__(self, *, accel: str, executor: Executor = local) -> None:
        self.accel = accel
        self.executor = executor

    def create(self, spec: InstanceSpec) -> Handle:
        files = self._check_socket_path(spec)
        tsc_khz = hostinfo.tsc_khz()
        argv = netns.exec_prefix(spec.netns) + build_argv(spec, accel=self.accel, tsc_khz=tsc_khz)
        pid = qemu_process.launch(argv, files, timeout=30, executor=self.executor)
        if spec.channels:
            faults.point("create.before_channels")
            try:
                channels.start_proxy(spec.rundir, spec.channels, files.channel_transport)
            except BaseException:
                qemu_process.shutdown(files, pid, ask_wait=1.0, grace=3.0)
                raise
        if spec.memory_file is None:
            return self._handle(spec, pid)
        return self._handle(spec, pid, memory_file=str(spec.memory_file), tsc_khz=tsc_khz)

    def _handle(self, spec: InstanceSpec, pid: int, **more: object) -> Handle:
        taps = [nic.tap for nic in spec.nics if nic.tap]
        return Handle(
            pid=pid,
            runtime={
                "rundir": str(spec.rundir),
                "accel": self.accel,
                "taps": taps,
                "guest": spec.guest,  # how stop asks it to end
                **more,
            },
            name=spec.name,
        )

    @staticmethod
    def _check_socket_path(spec: InstanceSpec) -> RunFiles:
        files = RunFiles(spec.rundir)
        if len(str(files.console_sock)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"runtime directory path too long for a unix socket: {spec.rundir} "
                "(set UNIKLAB_HOME to a shorter path)"
            )
        return files

    # -- templates and clones ------------------------------------------------------------
    def template_key(self, spec: InstanceSpec) -> dict[str, object]:
        """QEMU's binary (by its file: an upgrade changes the key without running it), the
        accelerator, and the template's command line."""
        qemu = shutil.which(hostinfo.QEMU)
        if qemu is None:
            raise UsageError(f"{hostinfo.QEMU} not found (apt-get install qemu-system-x86)")
        st = os.stat(qemu)
        if spec.memory_file is None:
            spec = replace(spec, memory_file=Path(TEMPLATE_RAM))
        return {
            "qemu": [qemu, st.st_size, st.st_mtime_ns],
            "accel": self.accel,
            "argv": build_argv(spec, accel=self.accel, tsc_khz=None, daemonize=False),
        }

    def save_template(self, handle: Handle, dest: Path) -> None:
        """Stop the vCPUs, write QEMU's state without the RAM (``x-ignore-shared``: the RAM
        is already in the template's memory file, which the guest booted on) into
        ``dest``, then end QEMU."""
        import asyncio  # not on `ps`'s path

        files = self._live(handle)
        memory = Path(str(handle.runtime.get("memory_file", "")))
        if memory.parent != dest:
            raise UsageError(f"{handle.name}: its memory file is not in {dest}: not a template")
        state = dest / TEMPLATE_STATE

        async def save(client: QMPClient) -> None:
            await client.execute("stop")
            await client.execute("migrate-set-capabilities", _IGNORE_SHARED)
            await client.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
            while True:
                status = await qmp.ask(client, "query-migrate")
                if status.get("status") == "completed":
                    return
                if status.get("status") in ("failed", "cancelled"):
                    raise LaunchError(
                        f"saving {handle.name}: {status.get('error-desc', status['status'])}"
                    )
                await asyncio.sleep(0.01)

        try:
            qmp.session(files.qmp, save, timeout=SAVE_TIMEOUT, what=f"saving {handle.name}")
            with contextlib.suppress(OSError):
                shutil.copyfile(files.console_log, dest / TEMPLATE_CONSOLE)
            info = {"memory": memory.name, "tsc_khz": handle.runtime.get("tsc_khz")}
            (dest / TEMPLATE_INFO).write_text(json.dumps(info))
        finally:
            self.destroy(handle)

    def restore_clone(self, spec: InstanceSpec, template: Path) -> Handle:
        """A QEMU whose RAM is the template's memory file mapped privately (copy on write:
        clones share its pages) and which loads the rest of its state, then runs; its
        init hears "restored" with the host's time."""
        import asyncio  # not on `ps`'s path

        files = self._check_socket_path(spec)
        try:
            info = json.loads((template / TEMPLATE_INFO).read_text())
            memory = template / str(info["memory"])
            tsc_khz = info.get("tsc_khz")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"template {template.name} is damaged: {exc}") from exc
        clone = replace(spec, memory_file=memory)
        argv = netns.exec_prefix(spec.netns) + build_argv(
            clone,
            accel=self.accel,
            tsc_khz=tsc_khz if isinstance(tsc_khz, int) else None,
            incoming=True,
        )
        files.rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # its boot, as `logs` shows it
            shutil.copyfile(template / TEMPLATE_CONSOLE, files.console_log)
        pid = qemu_process.launch(argv, files, timeout=30, executor=self.executor)
        handle = self._handle(spec, pid, clone_of=template.name)
        state = template / TEMPLATE_STATE

        async def restore(client: QMPClient) -> None:
            await client.execute("migrate-set-capabilities", _IGNORE_SHARED)
            await client.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state))}"})
            while (await qmp.ask(client, "query-status"))["status"] == "inmigrate":
                await asyncio.sleep(0.002)
            status = await qmp.ask(client, "query-migrate")
            if status.get("status") != "completed":
                raise LaunchError(
                    f"{spec.name}: restoring template {template.name} failed: "
                    f"{status.get('error-desc', status.get('status'))}"
                )
            await client.execute("cont")

        try:
            qmp.session(files.qmp, restore, timeout=RESTORE_TIMEOUT, what=f"restoring {spec.name}")
            if spec.guest == "linux" and not qemu_process.tell_console(
                files,
                lambda _t: guest_console.control_line("restored", _now()),
                heard=guest_console.RESTORED_HEARD.encode(),
                until=None,
                timeout=RESTORED_WAIT,
                every=RESTORED_EVERY,
            ):
                raise LaunchError(
                    f"{spec.name}: its init did not acknowledge the restore in "
                    f"{RESTORED_WAIT:.0f} s (an image baked before clones existed? bake it again)"
                )
        except BaseException:
            self.destroy(handle)
            raise
        return handle

    @staticmethod
    def _files(handle: Handle) -> RunFiles | None:
        rundir = handle.runtime.get("rundir")
        return RunFiles(Path(str(rundir))) if rundir else None

    def inspect(self, handle: Handle, *, net: bool = False) -> Inspection:
        files = self._files(handle)
        if files is None or not qemu_process.running(handle.pid, files):
            return Inspection(alive=False, state="gone")
        assert handle.pid is not None
        info = daemons.info(handle.pid)
        if info is None:
            return Inspection(alive=False, state="gone")
        state = "running"
        if info.state == "T" or files.paused.exists():
            state = "paused"
        try:
            channels.ensure_proxy(files.rundir)  # reconciled like the guest it serves
        except UniklabError as exc:
            log.warning("%s: channels: %s", handle.name or files.rundir, exc)
        rx_tx = self._net_bytes(handle) if net else None
        return Inspection(
            alive=True,
            state=state,
            uptime=info.uptime,
            cpu_seconds=info.cpu_seconds,
            rss_bytes=info.rss_bytes,
            net_rx_bytes=rx_tx[0] if rx_tx else None,
            net_tx_bytes=rx_tx[1] if rx_tx else None,
        )

    @staticmethod
    def _net_bytes(handle: Handle) -> tuple[int, int] | None:
        """The guest's bytes through its taps, read in QEMU's own network namespace (the
        taps live there); None for user-mode networking, whose traffic no device counts."""
        taps = handle.runtime.get("taps")
        if not taps or not isinstance(taps, list):
            return None
        try:
            text = Path(f"/proc/{handle.pid}/net/dev").read_text()
        except OSError:
            return None
        return netdev.guest_bytes(netdev.parse(text), [str(t) for t in taps])

    def console(self, handle: Handle) -> str:
        files = self._files(handle)
        return "" if files is None else qemu_process.console(files)

    def follow(self, handle: Handle, *, lines: int | None = None) -> Generator[str, None, None]:
        """The console log as QEMU writes it, tailed; ends once QEMU is gone."""
        files = self._files(handle)
        if files is None:  # never launched: nothing to say
            return consoles.follow_file(Path(os.devnull), lambda: False)
        return consoles.follow_file(
            files.console_log, lambda: qemu_process.running(handle.pid, files), lines=lines
        )

    def attach(self, handle: Handle) -> ConsoleAccess:
        files = self._files(handle)
        if files is None or not qemu_process.running(handle.pid, files):
            raise UniklabError(f"{handle.name} is not running: no console to attach to")
        if qemu_process.console_in_use(files):
            raise ConflictError(
                f"{handle.name}'s console is in use by another client "
                "(QEMU serves one at a time): detach that one first"
            )
        return ConsoleAccess(socket=files.console_sock)

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        """Ask QEMU to quit over QMP, then SIGTERM, then SIGKILL; remove the runtime dir."""
        files = self._files(handle)
        if files is not None:
            pid = qemu_process.pid_of(files, handle.pid)
            channels.stop_proxy(files.rundir)  # before: shutdown removes the directory
            qemu_process.shutdown(files, pid, ask_wait=min(timeout, 3.0), grace=timeout)

    def pause(self, handle: Handle) -> None:
        files = self._live(handle)
        qmp.call(files.qmp, "stop")
        files.paused.touch()

    def resume(self, handle: Handle) -> None:
        files = self._live(handle)
        qmp.call(files.qmp, "cont")
        files.paused.unlink(missing_ok=True)

    def stop(self, handle: Handle, *, timeout: float) -> int | None:
        """A Linux guest: the init hears "stop" on the console (SIGTERM to the app, SIGKILL
        after ``timeout``) and powers off, which ends QEMU (-no-reboot); a rumprun guest
        has no init of ours: ACPI's power button, briefly.  Then QMP ``quit``, SIGTERM,
        SIGKILL.  The runtime directory (console log) stays for ``create`` and ``logs``."""
        files = self._files(handle)
        if files is None:
            return None
        pid = qemu_process.pid_of(files, handle.pid)
        if not qemu_process.running(pid, files):
            return None
        try:
            seen = files.console_log.stat().st_size
        except OSError:
            seen = 0
        if files.paused.exists():
            qemu_process.ask_qmp(files, "cont")  # a frozen guest hears nothing
            files.paused.unlink(missing_ok=True)
        if handle.runtime.get("guest", "linux") == "linux":
            # The init's SIGKILL comes at ``timeout``; its power-off takes a moment more.
            qemu_process.tell_console(
                files,
                lambda t: guest_console.control_line("stop", str(math.ceil(max(0, timeout - t)))),
                heard=guest_console.STOP_HEARD.encode(),
                until=lambda: not qemu_process.running(pid, files),
                timeout=timeout + POWEROFF_WAIT,
            )
            qemu_process.end(files, pid, ask=lambda: None, ask_wait=0.0, grace=3.0)
        else:
            qemu_process.end(
                files,
                pid,
                ask=lambda: qemu_process.ask_qmp(files, "system_powerdown"),
                ask_wait=min(timeout, POWERDOWN_WAIT),
                grace=3.0,
            )
        files.paused.unlink(missing_ok=True)
        channels.stop_proxy(files.rundir)
        try:
            with files.console_log.open("rb") as f:
                f.seek(seen)
                said = f.read().decode(errors="replace")
        except OSError:
            return None
        return guest_console.app_exit_status(said)

    def _live(self, handle: Handle) -> RunFiles:
        files = self._files(handle)
        if files is None or not qemu_process.running(handle.pid, files):
            raise NotFoundError(f"{handle.name or 'the guest'} is not running")
        return files

    # -- what gc, placement and doctors ask --------------------------------------------
    def key(self, handle: Handle) -> str:
        return str(handle.runtime.get("rundir", ""))

    def owned(self, run_root: Path, *, timeout: float = 30.0) -> list[Owned]:
        """The QEMU processes (and their channel proxies) running out of a runtime directory
        under ``run_root``."""
        prefix = f"{run_root}/"
        out = []
        found = daemons.scan("qemu-system") + daemons.scan("-m", channels.PROXY_MODULE)
        for pid, cmd in found:
            at = cmd.find(prefix)
            if at < 0:
                continue
            name = cmd[at + len(prefix) :].split("/", 1)[0].split(" ", 1)[0]
            key = prefix + name
            out.append(Owned("process", str(pid), key, cmd[:120], ident=pid))
        return out

    def remove(self, item: Owned, *, timeout: float = 30.0) -> None:
        if item.ident is not None:
            daemons.stop(item.ident, item.key + "/", grace=min(timeout, 3.0))

    def facts(self, *, timeout: float = 30.0) -> HostFacts:
        mem = hostinfo.meminfo()
        return HostFacts(
            free_memory_mb=mem.get("MemAvailable", 0) // 1024,
            total_memory_mb=mem.get("MemTotal", 0) // 1024 or None,
            detail=f"QEMU ({self.accel})",
        )

    def doctor(self, *, bridge: str | None = None) -> list[Check]:
        return doctor(self.accel, bridge)


_IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


def _now() -> str:
    """The host's wall clock as a "restored" line gives it: seconds.nanoseconds."""
    ns = time.time_ns()
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def doctor(accel: str, bridge: str | None = None) -> list[Check]:
    """This machine's prerequisites for QEMU guests, each failure with its fix."""
    qemu = shutil.which(hostinfo.QEMU)
    checks = [
        Check(
            f"{hostinfo.QEMU} installed",
            qemu is not None,
            qemu or "not on PATH",
            "apt-get install -y qemu-system-x86",
        ),
        Check(
            "acceleration",
            True,
            "KVM" if accel == "kvm" else "TCG (KVM not usable here: guests boot slower)",
        ),
    ]
    try:
        path, _ = host_kernel()
        checks.append(Check("readable kernel", True, str(path)))
    except UniklabError as exc:
        checks.append(
            Check("readable kernel", False, str(exc), "apt-get install -y linux-image-amd64")
        )
    if bridge:
        ok = os.path.isdir(f"/sys/class/net/{bridge}/bridge")
        checks.append(
            Check(
                f"bridge {bridge}",
                ok,
                "present" if ok else "missing",
                f"uniklab net create NAME --bridge {bridge} --subnet …",
            )
        )
    return checks


def _unavailable() -> str | None:
    if shutil.which(hostinfo.QEMU) is None:
        return f"{hostinfo.QEMU} not found (apt-get install qemu-system-x86)"
    return None


def _create(ctx: BackendContext) -> QemuBackend:
    accel, why = hostinfo.choose_accel(ctx.kernel)
    log.debug("qemu accelerator %s: %s", accel, why)
    # The TSC rate is asked when a guest is launched (dmesg, a subprocess): ps, logs and
    # destroy never need it.
    return QemuBackend(accel=accel, executor=ctx.executor)


BACKEND = BackendType(
    name="qemu",
    factory=_create,
    user_net=USER_NET,
    local_only=True,
    unavailable=_unavailable,
    aliases=("kvm",),
    channels="virtio-serial",
)
