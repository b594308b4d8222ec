"""The Xen backend: PV domains driven with `xl` on a dom0, local or over SSH.

uniklab copies the image to the host once (content-addressed, verified by sha256), writes
the domain config next to it, `xl create`s it, takes `xl list` as the truth for `ps`,
reads the console from xenconsoled's log, and `xl destroy`s.  Everything runs through one
Executor, so the same code drives this machine (when it is a dom0) and remote hosts.

Each domain's config file (/var/lib/uniklab/domains/NAME.cfg, there for the domain's whole
life) opens with a comment naming the uniklab home that made it, so `gc` can tell its own
leftovers from another home's domains on a shared dom0, with no state store to ask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from uniklab import consoles, executor
from uniklab.backends import netdev, xen_channels, xen_doctor, xl_errors, xl_parse
from uniklab.backends.base import (
    Backend,
    Check,
    ConsoleAccess,
    Handle,
    HostFacts,
    Inspection,
    InstanceSpec,
    Owned,
    owner_tag,
)
from uniklab.backends.registry import BackendContext, BackendType
from uniklab.backends.xen_config import XenDisk, XenDomain, XenVif, build_config
from uniklab.digest import sha256_file
from uniklab.errors import CommandError, LaunchError, NotFoundError, UniklabError, UsageError
from uniklab.executor import Executor
from uniklab.guest import console as guest_console
from uniklab.guest.console import app_exit_status

log = logging.getLogger(__name__)

REMOTE_ROOT = PurePosixPath("/var/lib/uniklab")
DOMAINS = REMOTE_ROOT / "domains"
CONSOLE_DIR = PurePosixPath("/var/log/xen/console")
OWNER_PREFIX = "# uniklab-owner: "
STOP_POLL = 1.0  # seconds between `xl list`s while a domain shuts down
XL_QUERY_TRIES = 3  # a read-only xl command that dies of a signal is asked again
XL_QUERY_PAUSE = 0.5
TEMPLATES = REMOTE_ROOT / "templates"  # a directory per template key: STATE, disk copies
STATE = "state"  # xl save's checkpoint file in it
TEMPLATE_RECORD = "xen.json"  # in the template's directory on this machine
SAVE_TIMEOUT = 300.0  # xl save: ~2.5 s for 64 MB on the virtual Xen host
RESTORE_TIMEOUT = 300.0
RESTORED = "restored"  # the control line's verb (guest/ctl.h)
CONSOLE_ARG = "console=hvc0 "  # what build_config puts before the Linux command line
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# xl's status of a domain, in the words of Inspection.state ("blocked" is an idle guest).
_STATES = {
    "running": "running",
    "blocked": "running",
    "paused": "paused",
    "shutdown": "stopped",
    "crashed": "stopped",
    "dying": "stopped",
}
# Prints "NAME.cfg<TAB>first line" for each config file in $1, with shell builtins only.
_LIST_CFGS = """\
cd "$1" 2>/dev/null || exit 0
for f in *.cfg; do
  [ -f "$f" ] || continue
  l=
  IFS= read -r l < "$f"
  printf '%s\\t%s\\n' "$f" "$l"
done
"""


@dataclass(frozen=True)
class XenTemplate:
    """A template on a Xen host, as this machine records it: where its checkpoint lies
    there (TEMPLATES/key/STATE, disk copies beside it, named by their vdev), what says it
    is still the one saved (its size and mtime, checked by every restore; its sha256), and
    the domain it was, which a clone's config repeats."""

    host: str
    key: str
    size: int
    mtime: str  # as `ls --time-style=+%s.%N` prints it
    sha256: str
    kernel: str
    ramdisk: str | None
    cmdline: str | None
    memory_mb: int
    vcpus: int
    nics: int
    disks: tuple[str, ...]
    save_seconds: float


def template_key(dest: Path) -> str:
    key = dest.name
    if not _KEY.fullmatch(key):
        raise UsageError(f"not a template key: {key!r}")
    return key


def read_template(template: Path) -> XenTemplate:
    """The record save_template left in ``template``; NotFoundError if it is not there or
    not one (a template saved by another backend, or damaged)."""
    path = template / TEMPLATE_RECORD
    try:
        d = json.loads(path.read_text())
        return XenTemplate(**{**d, "disks": tuple(d["disks"])})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise NotFoundError(f"no Xen template in {template} ({exc})") from None


def _facts(text: str) -> dict[str, str]:
    """The "word value" lines the template scripts print."""
    out = {}
    for line in text.splitlines():
        word, _, value = line.strip().partition(" ")
        if word:
            out[word] = value
    return out


def is_vif_of(domid: int, ifname: str) -> bool:
    """Is ``ifname`` dom0's end of one of domain ``domid``'s vifs (``vifDOMID.N``)?"""
    return re.fullmatch(rf"vif{domid}\.\d+", ifname) is not None


def cfg_path(name: str) -> PurePosixPath:
    return DOMAINS / f"{name}.cfg"


def console_path(name: str) -> PurePosixPath:
    return CONSOLE_DIR / f"guest-{name}.log"


def parse_cfg_heads(text: str) -> dict[str, str | None]:
    """The listing of _LIST_CFGS as {domain name: owner tag, None when none is named}."""
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        fname, sep, head = line.partition("\t")
        if not sep or not fname.endswith(".cfg") or "/" in fname:
            continue
        owner = head.removeprefix(OWNER_PREFIX).strip() if head.startswith(OWNER_PREFIX) else ""
        out[fname.removesuffix(".cfg")] = owner or None
    return out


class XenBackend(Backend):
    name = "xen"

    def __init__(self, executor: Executor, *, vif_script: str | None = None) -> None:
        self.ex = executor
        self.vif_script = vif_script
        self._xen_version: str | None = None  # `xl info`'s, asked once

    # -- images on the host ------------------------------------------------------------
    def _remote_hashes(self, paths: list[PurePosixPath]) -> dict[str, str]:
        r = self.ex.run(["sha256sum", *map(str, paths)], timeout=60, check=False)
        out = {}
        for line in r.stdout.splitlines():
            digest, _, name = line.partition("  ")
            out[name.strip()] = digest
        return out

    def ensure_image(self, *files: Path) -> tuple[PurePosixPath, ...]:
        """Copy each file (kernel, initrd, data disks) to the host once, named by its
        sha256, and verify it there."""
        want = [sha256_file(f) for f in files]
        targets = [REMOTE_ROOT / "blobs" / digest for digest in want]
        have = self._remote_hashes(targets)
        missing = [i for i, t in enumerate(targets) if have.get(str(t)) != want[i]]
        if missing:
            self.ex.run(["mkdir", "-p", str(REMOTE_ROOT / "blobs")], timeout=30)
        for i in missing:
            tmp = PurePosixPath(f"{targets[i]}.part")
            self.ex.upload(files[i], str(tmp))
            self.ex.run(["mv", "-f", str(tmp), str(targets[i])], timeout=30)
        if missing:
            have = self._remote_hashes(targets)
            bad = [files[i].name for i in missing if have.get(str(targets[i])) != want[i]]
            if bad:
                raise UniklabError(
                    f"{self.ex.name}: image copy failed verification ({', '.join(bad)})"
                )
        return tuple(targets)

    # -- the Backend protocol ----------------------------------------------------------
    def create(self, spec: InstanceSpec) -> Handle:
        if spec.rumprun is None and spec.initrd is None:
            raise LaunchError("a Xen guest boots from an initrd: a --root image runs on QEMU only")
        if spec.volumes:
            # The host keeps one content-addressed copy of each file: not for writing.
            raise LaunchError("writable disks (--disk, rumprun's -b) go with QEMU guests for now")
        vifs = self._vifs(spec)
        rumprun_cfg = _rumprun_config(spec)
        ports, links = _channels(spec)
        initrd = _channel_initrd(spec) if ports or links else spec.initrd
        uploads = [spec.kernel, *([initrd] if initrd else []), *spec.disks]
        kernel, *rest = self.ensure_image(*uploads)
        ramdisk = rest.pop(0) if spec.initrd else None
        # rumprun's etfs opens its disks read-write (a read-only vbd: "etfs register
        # failed: 1"), and the content-addressed copy is every guest's: each domain gets a
        # copy of its own, beside its config, removed with it.
        disks = [DOMAINS / f"{spec.name}.{_xvd(i)}" for i in range(len(rest))]
        if disks:
            self.ex.run(["mkdir", "-p", str(DOMAINS)], timeout=30)
            for blob, copy in zip(rest, disks, strict=True):
                self.ex.run(["cp", "--", str(blob), str(copy)], timeout=120)
        cfg_text = build_config(
            XenDomain(
                name=spec.name,
                kernel=str(kernel),
                ramdisk=None if ramdisk is None else str(ramdisk),
                cmdline=None if rumprun_cfg else spec.cmdline,
                memory_mb=spec.memory_mb,
                vcpus=spec.vcpus,
                vifs=vifs,
                disks=[XenDisk(str(d), _xvd(i)) for i, d in enumerate(disks)],
            )
        )
        cfg = cfg_path(spec.name)
        self.ex.run(["mkdir", "-p", str(cfg.parent)], timeout=30)
        self.ex.run(
            ["sh", "-c", 'cat > "$1"', "sh", str(cfg)], input=_owned(spec, cfg_text), timeout=30
        )
        # rumprun's launcher and channels: create paused, give the guest its config in
        # its xenstore directory (it reads rumprun/cfg, uniklab/vchan at boot), unpause.
        paused = rumprun_cfg is not None or bool(ports or links)
        try:
            self.ex.run(["xl", "create", *(["-p"] if paused else []), str(cfg)], timeout=120)
        except CommandError as exc:
            self.ex.run(["rm", "-f", str(cfg)], timeout=30, check=False)
            said = exc.stderr.strip() and not exc.timed_out
            detail = xl_errors.explain(exc.stderr, memory_mb=spec.memory_mb) if said else exc
            # A known cause is the whole message; xl's cascade only when it is not.
            known = said and xl_errors.cause(exc.stderr, memory_mb=spec.memory_mb)
            log.debug("xl create on %s said: %s", self.ex.name, exc.stderr)
            raise LaunchError(
                f"xl create failed on {self.ex.name}: {detail}",
                argv=exc.argv,
                output="" if known else exc.stderr,
            ) from exc
        except BaseException:
            # The host stopped answering (or a signal): the domain may be there.
            with contextlib.suppress(Exception):
                self.destroy(Handle(pid=None, runtime={"cfg": str(cfg)}, name=spec.name))
            raise
        runtime: dict[str, object] = {"host": self.ex.name, "domain": spec.name, "cfg": str(cfg)}
        if ports or links:
            runtime.update(channels=list(ports), rundir=str(spec.rundir))
        handle = Handle(pid=None, runtime=runtime)
        # From here the domain is this call's: whatever fails takes it and its config away
        # (the caller's clean-up knows neither until this returns).
        try:
            domid = runtime["domid"] = self._domid(spec.name)
            if paused:
                if domid is None:
                    raise LaunchError(f"domain {spec.name} vanished after xl create -p")
                if rumprun_cfg is not None:
                    key = f"/local/domain/{domid}/rumprun/cfg"
                    self.ex.run(["xenstore-write", key, rumprun_cfg], timeout=30)
                if ports or links:
                    self._start_channels(handle, domid, ports, links)
                self.ex.run(["xl", "unpause", str(domid)], timeout=60)
        except BaseException:
            with contextlib.suppress(Exception):
                self.destroy(handle)
            raise
        return handle

    def _vifs(self, spec: InstanceSpec) -> list[XenVif]:
        vifs = []
        for nic in spec.nics:
            if nic.kind != "host-bridge" or not nic.bridge:
                raise LaunchError("a Xen guest's NIC joins a bridge of its host (--net BRIDGE)")
            vifs.append(XenVif(nic.mac, nic.bridge, self.vif_script))
        return vifs

    def _domains(self, timeout: float = 30) -> list[xl_parse.Domain]:
        return xl_parse.parse_list(self._xl_query(["list"], timeout=timeout))

    def _xl_query(self, args: list[str], *, timeout: float) -> str:
        """The output of a read-only xl command (list, info): xl that dies of a signal
        (it segfaults now and then on a busy dom0, e.g. while another domain is saved) is
        asked again, up to XL_QUERY_TRIES times; then one line says what to look at."""
        argv = ["xl", *args]
        for attempt in range(1, XL_QUERY_TRIES + 1):
            r = self.ex.run(argv, timeout=timeout, check=False)
            if r.returncode == 0:
                return r.stdout
            sig = _killed_by(r.returncode)
            if sig is None:  # xl said why: not ours to hide
                raise CommandError(argv, r.returncode, r.stderr, host=self.ex.name)
            log.debug("%s: xl %s died of signal %d (try %d)", self.ex.name, args[0], sig, attempt)
            time.sleep(XL_QUERY_PAUSE)
        raise UniklabError(
            f"xl {' '.join(args)} crashed {XL_QUERY_TRIES} times on {self.ex.name} (killed by "
            f"signal {sig}): Xen's toolstack there is failing; look at the dom0 (xl info, "
            "dmesg, /var/log/xen)"
        )

    def _domid(self, name: str) -> int | None:
        for d in self._domains():
            if d.name == name:
                return d.domid
        return None

    def inspect(self, handle: Handle, *, net: bool = False) -> Inspection:
        name = self.key(handle)
        want = handle.runtime.get("domid")
        for d in self._domains():
            if d.name != name:
                continue
            if want is not None and d.domid != want:
                break  # the name now belongs to another domain: ours is gone
            alive = _STATES[d.status] != "stopped"
            if alive:
                self._ensure_channels(handle)
            rx_tx = self._net_bytes(d.domid) if net and alive else None
            return Inspection(
                alive=alive,
                state=_STATES[d.status],
                cpu_seconds=d.cpu_seconds,
                rss_bytes=d.mem_mb * 2**20,
                detail="" if alive else f"domain {name} is {d.status} on {self.ex.name}",
                net_rx_bytes=rx_tx[0] if rx_tx else None,
                net_tx_bytes=rx_tx[1] if rx_tx else None,
            )
        return Inspection(
            alive=False, state="gone", detail=f"domain {name} is gone from {self.ex.name}"
        )

    def _net_bytes(self, domid: int) -> tuple[int, int] | None:
        """The domain's bytes through its vifs, from the dom0 ends (``vifDOMID.N``)."""
        r = self.ex.run(["cat", "/proc/net/dev"], timeout=30, check=False)
        return netdev.guest_bytes(netdev.parse(r.stdout), lambda name: is_vif_of(domid, name))

    def console(self, handle: Handle) -> str:
        path = console_path(self.key(handle))
        r = self.ex.run(["cat", str(path)], timeout=30, check=False)
        return r.stdout

    def _domain_arg(self, handle: Handle) -> str:
        """How xl names the handle's domain: its id (a later domain may take the name)."""
        domid = handle.runtime.get("domid")
        return str(domid) if domid is not None else self.key(handle)

    def follow(self, handle: Handle, *, lines: int | None = None) -> Generator[str, None, None]:
        """xenconsoled's log of the domain, tailed on the host by one long-running command
        (``_FOLLOW``) whose output is read as it comes."""
        path = console_path(self.key(handle))
        n = "+1" if lines is None else str(lines)
        remote = ["sh", "-c", _FOLLOW, "sh", str(path), self._domain_arg(handle), n]
        return consoles.decoded(executor.stream(self.ex.command(remote)))

    def attach(self, handle: Handle) -> ConsoleAccess:
        """`xl console` on the host, on a terminal there (``ssh -t``); its escape is ^]
        too.  xenconsoled lets several attach at once."""
        argv = ["xl", "console", self._domain_arg(handle)]
        return ConsoleAccess(argv=tuple(self.ex.command(argv, tty=True)))

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        """`xl destroy` the domain if it still runs (and is still the one created: another
        domain that took its name is left alone), then remove its config and console log."""
        name = self.key(handle)
        domid = self._own_domid(handle)
        if domid is not None:
            self._xl_destroy(domid, timeout=max(timeout, 30))
        self._stop_channels(handle)
        # A create that failed before its handle was recorded left a config by the name.
        self._remove_files(name, str(handle.runtime.get("cfg") or cfg_path(name)))

    def _own_domid(self, handle: Handle) -> int | None:
        """The id of the handle's domain while it exists (and is still the one created:
        another domain that took its name is not ours)."""
        name = self.key(handle)
        want = handle.runtime.get("domid")
        domid = self._domid(name)
        if domid is not None and want is not None and domid != want:
            log.info(
                "%s: domain %s is now id %s, not %s: left alone", self.ex.name, name, domid, want
            )
            return None
        return domid

    def _xl_on(self, handle: Handle, verb: str) -> None:
        domid = self._own_domid(handle)
        if domid is None:
            raise NotFoundError(f"domain {self.key(handle)} is not on {self.ex.name}")
        self.ex.run(["xl", verb, str(domid)], timeout=60)

    def pause(self, handle: Handle) -> None:
        self._xl_on(handle, "pause")

    def resume(self, handle: Handle) -> None:
        self._xl_on(handle, "unpause")

    def stop(self, handle: Handle, *, timeout: float) -> int | None:
        """`xl shutdown`: the guest kernel runs /sbin/poweroff, which is uniklab's init in
        a Linux image (it has PID 1 SIGTERM the app and power off when the app ends); a
        rumprun guest halts.  After ``timeout`` seconds, `xl destroy`.  The config and
        the console log stay for ``create`` and ``console``."""
        domid = self._own_domid(handle)
        if domid is None:
            return None
        seen = len(self.console(handle))
        self.ex.run(["xl", "unpause", str(domid)], timeout=60, check=False)
        self.ex.run(["xl", "shutdown", str(domid)], timeout=60, check=False)
        deadline = time.monotonic() + timeout
        while any(d.domid == domid for d in self._domains()):
            if time.monotonic() >= deadline:
                self._xl_destroy(domid, timeout=max(timeout, 30))
                break
            time.sleep(STOP_POLL)
        self._stop_channels(handle)
        return app_exit_status(self.console(handle)[seen:])

    # -- templates and clones: xl save / xl restore ------------------------------------
    def template_key(self, spec: InstanceSpec) -> dict[str, object]:
        """The host (its checkpoints live there) and its Xen (what restores them)."""
        if self._xen_version is None:
            info = xl_parse.parse_info(self._xl_query(["info"], timeout=30))
            self._xen_version = info.get("xen_version", "?")
        return {"host": self.ex.name, "xen": self._xen_version, "vif_script": self.vif_script}

    def save_template(self, handle: Handle, dest: Path) -> None:
        """`xl save` the ready domain into a checkpoint on the host, named by the template's
        key (``dest``'s name), with its disk copies beside it; ``dest`` gets the record that
        finds and verifies it (XenTemplate).  xl suspends the guest itself (its kernel
        must answer: a paused guest is unpaused first) and ends the domain once saved."""
        key = template_key(dest)
        name = self.key(handle)
        domid = self._own_domid(handle)
        if domid is None:
            raise NotFoundError(f"domain {name} is not on {self.ex.name}")
        feature = f"/local/domain/{domid}/control/feature-suspend"
        said = self.ex.run(["xenstore-read", feature], timeout=30, check=False).stdout.strip()
        if said != "1":
            raise LaunchError(
                f"domain {name} on {self.ex.name} cannot be a template: its kernel does not "
                f"announce Xen's suspend ({feature} is {said or 'unset'}; rumprun's Mini-OS "
                "has no suspend), so xl save cannot save it"
            )
        cfgs = xl_parse.parse_list_long(self._xl_query(["list", "-l", str(domid)], timeout=60))
        was = cfgs[0] if len(cfgs) == 1 else None
        if was is None or was.memory_mb is None or was.kernel is None:
            raise UniklabError(f"{self.ex.name}: `xl list -l {domid}` did not describe it")
        where = TEMPLATES / key
        self.ex.run(
            ["sh", "-c", 'rm -rf -- "$1" && mkdir -p -- "$1"', "sh", str(where)], timeout=30
        )
        self.ex.run(["xl", "unpause", str(domid)], timeout=60, check=False)
        start = time.monotonic()
        try:
            self.ex.run(["xl", "save", str(domid), str(where / STATE)], timeout=SAVE_TIMEOUT)
        except CommandError as exc:
            self.ex.run(["rm", "-rf", "--", str(where)], timeout=30, check=False)
            told = exc.stderr.strip() and not exc.timed_out
            detail = xl_errors.explain(exc.stderr) if told else exc
            raise LaunchError(
                f"xl save failed on {self.ex.name}: {detail}", argv=exc.argv, output=exc.stderr
            ) from exc
        seconds = time.monotonic() - start
        try:
            kept = self.ex.run(
                ["sh", "-c", _KEEP_STATE, "sh", str(where), str(DOMAINS / name)], timeout=300
            ).stdout
            facts = _facts(kept)
            size, mtime = facts["stat"].split()
            record = XenTemplate(
                host=self.ex.name,
                key=key,
                size=int(size),
                mtime=mtime,
                sha256=facts["sha256"],
                kernel=was.kernel,
                ramdisk=was.ramdisk,
                cmdline=(was.extra or "").removeprefix(CONSOLE_ARG) or None,
                memory_mb=was.memory_mb,
                vcpus=was.vcpus or 1,
                nics=len(was.macs),
                disks=tuple(facts.get("disks", "").split()),
                save_seconds=round(seconds, 3),
            )
            (dest / TEMPLATE_RECORD).write_text(json.dumps(asdict(record), indent=2) + "\n")
        except BaseException:
            self.ex.run(["rm", "-rf", "--", str(where)], timeout=30, check=False)
            raise
        finally:
            cfg = handle.runtime.get("cfg")
            self._remove_files(name, str(cfg) if cfg else None)

    def restore_clone(self, spec: InstanceSpec, template: Path) -> Handle:
        """`xl restore` the template's checkpoint with a config of the clone's own (its
        name, its NICs' MACs and bridges, its disk copies: what xl lets differ; memory and
        vCPUs are the saved domain's whatever the config says, so a spec asking otherwise
        is refused).  The guest runs on at once: PV Linux takes the wall clock from Xen's
        shared info as it resumes, and the host then writes the control line "restored
        SECONDS.NANOS" (its own clock, read as it writes) on the guest's console, which the
        init answers by setting its clock and taking a new address for a NIC whose MAC
        changed.  NotFoundError when the checkpoint is gone or unreadable (rebuild it)."""
        t = read_template(template)
        if t.host != self.ex.name:
            raise NotFoundError(f"template {t.key} was saved on {t.host}, not {self.ex.name}")
        if (spec.memory_mb, spec.vcpus) != (t.memory_mb, t.vcpus):
            raise UsageError(
                f"a clone of template {t.key} has its {t.memory_mb} MB and {t.vcpus} vCPU "
                f"(xl restore keeps the saved domain's), not {spec.memory_mb} MB and "
                f"{spec.vcpus} vCPU"
            )
        vifs = self._vifs(spec)
        if len(vifs) != t.nics:
            raise UsageError(
                f"a clone of template {t.key} has its {t.nics} NIC(s), not {len(vifs)}"
            )
        copies = [DOMAINS / f"{spec.name}.{vdev}" for vdev in t.disks]
        cfg_text = build_config(
            XenDomain(
                name=spec.name,
                kernel=t.kernel,
                ramdisk=t.ramdisk,
                cmdline=t.cmdline,
                memory_mb=t.memory_mb,
                vcpus=t.vcpus,
                vifs=vifs,
                disks=[XenDisk(str(c), v) for c, v in zip(copies, t.disks, strict=True)],
            )
        )
        cfg = cfg_path(spec.name)
        argv = [
            "sh", "-c", _RESTORE, "sh", str(TEMPLATES / t.key), f"{t.size} {t.mtime}",
            str(cfg), spec.name, str(DOMAINS / spec.name),
            guest_console.CONTROL_PREFIX + RESTORED, *t.disks,
        ]  # fmt: skip
        r = self.ex.run(argv, input=_owned(spec, cfg_text), timeout=RESTORE_TIMEOUT, check=False)
        if r.returncode == _STATE_CHANGED:
            raise NotFoundError(
                f"template {t.key} on {self.ex.name} is gone or changed since it was saved "
                f"({r.stderr.strip()}): make it again"
            )
        if r.returncode == _RESTORE_FAILED:
            log.debug("xl restore on %s said: %s", self.ex.name, r.stderr)
            if xl_errors.unreadable_state(r.stderr):
                raise NotFoundError(
                    f"template {t.key} on {self.ex.name} is unreadable (xl restore: its "
                    "checkpoint is gone, cut short or not xl's): make it again"
                )
            raise LaunchError(
                f"xl restore failed on {self.ex.name}: {xl_errors.explain(r.stderr)}",
                argv=r.argv,
                output=r.stderr,
            )
        facts = _facts(r.stdout)
        if r.returncode != 0 or "domid" not in facts:
            self._remove_files(spec.name, str(cfg))
            raise CommandError(r.argv, r.returncode, r.stderr, host=self.ex.name)
        if facts.get("restored") is None:
            log.warning("%s: no console for %s: its clock was not told", self.ex.name, spec.name)
        return Handle(
            pid=None,
            runtime={
                "host": self.ex.name,
                "domain": spec.name,
                "cfg": str(cfg),
                "domid": int(facts["domid"]),
                "clone_of": t.key,  # what `ps` shows (Lab.clone_of)
            },
        )

    def drop_template(self, template: Path, *, timeout: float = 60.0) -> None:
        """Remove the template's checkpoint and disk copies from the host (``template``'s
        record names them; without one, the directory named after ``template``, the key,
        as a save cut short leaves it); the record itself is the caller's."""
        try:
            t = read_template(template)
        except NotFoundError:
            key = template_key(template)
        else:
            if t.host != self.ex.name:
                return
            key = t.key
        self.ex.run(["rm", "-rf", "--", str(TEMPLATES / key)], timeout=timeout)

    # -- what gc, placement and doctors ask --------------------------------------------
    def key(self, handle: Handle) -> str:
        # A row reserved but not yet recorded names its domain after the instance.
        return str(handle.runtime.get("domain") or handle.name)

    def owned(self, run_root: Path, *, timeout: float = 30) -> list[Owned]:
        """The domain configs of the home whose runtime root is ``run_root`` on the host,
        each with its domain's id while that domain exists."""
        owner = owner_tag(run_root)
        r = self.ex.run(["sh", "-c", _LIST_CFGS, "sh", str(DOMAINS)], timeout=timeout)
        mine = sorted(name for name, tag in parse_cfg_heads(r.stdout).items() if tag == owner)
        domids = {d.name: d.domid for d in self._domains(timeout)}
        out = []
        for name in mine:
            domid = domids.get(name)
            if domid is not None:
                detail = f"domain {domid} of no instance ({cfg_path(name)})"
                out.append(Owned("domain", name, name, detail, ident=domid))
            else:
                out.append(Owned("domain-cfg", name, name, f"{cfg_path(name)} of no instance"))
        return out + xen_channels.owned(self.ex, owner, run_root, timeout=timeout)

    def remove(self, item: Owned, *, timeout: float = 30) -> None:
        """Remove one leftover of ``owned``: that very domain (by id), its config, its log;
        or a channel's proxy or forward."""
        if xen_channels.remove(self.ex, item, timeout=timeout):
            return
        if item.ident is not None:
            self._xl_destroy(item.ident, timeout=timeout)
        self._remove_files(item.key, str(cfg_path(item.key)))

    def facts(self, *, timeout: float = 30) -> HostFacts:
        info = xl_parse.parse_info(self._xl_query(["info"], timeout=timeout))
        try:
            free = int(info.get("free_memory", "0"))
            total: int | None = int(info.get("total_memory", "0")) or None
        except ValueError as exc:
            raise UniklabError(f"{self.ex.name}: unreadable `xl info`: {exc}") from None
        version = f"Xen {info.get('xen_version', '?')}, dom0 kernel {info.get('release', '?')}"
        return HostFacts(free_memory_mb=free, total_memory_mb=total, detail=version)

    def doctor(self, *, bridge: str | None = None) -> list[Check]:
        return xen_doctor.doctor(self.ex, bridge=bridge or "xenbr0")

    def _xl_destroy(self, domid: int, *, timeout: float) -> None:
        r = self.ex.run(["xl", "destroy", str(domid)], timeout=timeout, check=False)
        # A domain that went away meanwhile is what was asked for.
        if r.returncode != 0 and any(d.domid == domid for d in self._domains()):
            raise CommandError(r.argv, r.returncode, r.stderr, host=self.ex.name)

    def _remove_files(self, name: str, cfg: str | None) -> None:
        """The domain's config, console log and disk copies (``NAME.xvd?``)."""
        paths = [p for p in (cfg, str(console_path(name))) if p]
        self.ex.run(["sh", "-c", _RM_FILES, str(DOMAINS / name), *paths], timeout=30, check=False)

    # -- channels (issue 18: uniklab.backends.xen_channels) -------------------------------
    def _start_channels(
        self,
        handle: Handle,
        domid: int,
        ports: Sequence[int],
        links: Sequence[xen_channels.XenLink],
    ) -> None:
        rundir = Path(str(handle.runtime["rundir"]))
        peers = []
        for lk in links:
            other = self._domid(lk.other)
            if other is None:
                raise LaunchError(f"link to {lk.other}: no such domain on {self.ex.name}")
            peers.append((lk, other))
        # The dom0's proxies are uniklab-vchan too (--listen): on the host once, by content.
        from uniklab.bake.vchan import helper_binary  # the bakers: not on `ps`'s path

        helper = str(self.ensure_image(helper_binary())[0]) if ports else ""
        xen_channels.start(
            self.ex,
            owner=owner_tag(rundir.parent),
            name=self.key(handle),
            domid=domid,
            ports=ports,
            rundir=rundir,
            helper=helper,
            links=peers,
        )

    def _ensure_channels(self, handle: Handle) -> None:
        """A live domain's channel forward started again if it died (inspect's part in
        reconciling); a failure is a warning: the domain itself is fine."""
        ports = handle.runtime.get("channels")
        if not ports or not isinstance(ports, list):
            return
        rundir = Path(str(handle.runtime["rundir"]))
        try:
            xen_channels.ensure_forward(
                self.ex,
                owner=owner_tag(rundir.parent),
                name=self.key(handle),
                ports=[int(p) for p in ports],
                rundir=rundir,
            )
        except UniklabError as exc:
            log.warning("%s: the channels of %s: %s", self.ex.name, self.key(handle), exc)

    def _stop_channels(self, handle: Handle) -> None:
        if not handle.runtime.get("channels"):
            return
        rundir = Path(str(handle.runtime["rundir"]))
        owner = owner_tag(rundir.parent)
        xen_channels.stop(self.ex, owner=owner, name=self.key(handle), rundir=rundir)

    # Last: the method's name shadows the builtin in annotations below it.
    def list(self) -> list[xl_parse.Domain]:
        return self._domains()


# $1 a console log, $2 its domain, $3 tail's -n: the log as it grows while the domain lives
# (xl list DOMAIN: a second after it is gone, for its last words) and while the reader
# listens: when the reader goes, its end of our stdin closes (ssh without a tty signals
# nothing), and the `cat` holding it ends tail.  A job's stdin is /dev/null unless given;
# its stdout must not hold the reader's pipe open after the script ends.
_FOLLOW = """\
tail -n "$3" -F "$1" 2>/dev/null &
t=$!
trap 'kill "$t" 2>/dev/null' EXIT
exec 3<&0
{ cat; kill "$t"; } <&3 >/dev/null 2>&1 &
exec 3<&-
while kill -0 "$t" 2>/dev/null && xl list "$2" >/dev/null 2>&1; do
  sleep 1
done
sleep 1
"""
# "SIZE MTIME" of a file, with what even a small dom0 has (GNU ls).
_STAT_OF = """\
stat_of() {
  ls -ln --time-style=+%s.%N -- "$1" 2>/dev/null | { read -r _ _ _ _ s m _ && echo "$s $m"; }
}
"""
# $1 the template's directory, $2 DOMAINS/NAME of the domain just saved: its disk copies
# move in (named by their vdev); then what the record keeps.
_KEEP_STATE = (
    _STAT_OF
    + """\
cd "$1" || exit 1
disks=
for d in "$2".xvd?; do
  [ -f "$d" ] || continue
  mv -f -- "$d" "${d##*.}" || exit 1
  disks="$disks ${d##*.}"
done
echo "disks$disks"
set -- $(sha256sum state) && echo "sha256 $1"
echo "stat $(stat_of state)"
"""
)
# $1 the template's directory, $2 "SIZE MTIME" its state had when saved, $3 the clone's
# config (written from stdin), $4 its name, $5 DOMAINS/NAME, $6 the control line's start,
# then the vdevs of the template's disk copies.  Copies the disks, `xl restore`s, and
# writes the control line with this host's clock on the guest's console pty (the slave
# end of xenconsoled's), read as late as can be: bash's EPOCHREALTIME, else date.
_RESTORE = (
    _STAT_OF
    + """\
tpl=$1 want=$2 cfg=$3 name=$4 prefix=$5 ctl=$6
shift 6
have=$(stat_of "$tpl/state")
if [ "$have" != "$want" ]; then
  echo "its state is ${have:+now }${have:-missing}${have:+, was $want}" >&2
  exit 3
fi
for v in "$@"; do
  cp -- "$tpl/$v" "$prefix.$v" || { rm -f -- "$prefix".xvd?; exit 3; }
done
cat > "$cfg" || exit 1
if ! xl restore "$cfg" "$tpl/state"; then
  rm -f -- "$cfg" "$prefix".xvd?
  exit 4
fi
domid=$(xl domid "$name") || { echo "xl domid $name failed after its restore" >&2; exit 1; }
echo "domid $domid"
# The line goes once every NIC is connected again (state 4): netfront reads its MAC from
# xenstore on the way, and the init looks at its NICs' MACs when the line comes.
vifs="/local/domain/$domid/device/vif"
for n in $(xenstore-list "$vifs" 2>/dev/null); do
  i=0
  until [ "$(xenstore-read "$vifs/$n/state" 2>/dev/null)" = 4 ]; do
    i=$((i + 1))
    [ "$i" -le 200 ] || break
    sleep 0.05
  done
done
i=0
until tty=$(xenstore-read "/local/domain/$domid/console/tty" 2>/dev/null) && [ -n "$tty" ]; do
  i=$((i + 1))
  [ "$i" -le 40 ] || exit 0
  sleep 0.05
done
t=${EPOCHREALTIME:-}
case $t in
  '') t=$(date +%s.%N) ;;
  *,*) t=${t%,*}.${t#*,}000 ;;
  *) t=${t}000 ;;
esac
printf '%s %s\\n' "$ctl" "$t" > "$tty" && echo "restored $t"
"""
)


def _killed_by(returncode: int) -> int | None:
    """The signal that ended a command: a negative code here (subprocess), 128+N through
    a remote shell; None for an exit of the command's own."""
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None


_STATE_CHANGED = 3
_RESTORE_FAILED = 4
# Removes "$@" and the domain's disk copies, "$0".xvd? ($0: DOMAINS/NAME).
_RM_FILES = 'rm -f -- "$@" "$0".xvd?'
_KERNFS = {"source": "dev", "path": "virtual", "fstype": "kernfs", "mountpoint": "/kern"}


def _owned(spec: InstanceSpec, cfg_text: str) -> str:
    """The domain config opened by the line naming its home: an instance's runtime
    directory lives in its home's runtime root, which names the home without the backend
    knowing of homes."""
    return f"{OWNER_PREFIX}{owner_tag(spec.rundir.parent)}\n{cfg_text}"


def _xvd(index: int) -> str:
    return "xvd" + "abcdefghijklmnopqrstuvwxyz"[index]


def _rumprun_config(spec: InstanceSpec) -> str | None:
    """The rumprun config for ``xen`` as rumprun's launcher writes it: netfront NICs are
    xenif<N>, created at boot (cloner); disks are etfs devices named by their xvd; kernfs
    is always mounted on /kern."""
    if spec.rumprun is None:
        return None
    try:
        return spec.rumprun.render(
            netif="xenif",
            cloner=True,
            blk=lambda i: {"source": "etfs", "path": _xvd(i)},
            extra_blk=[_KERNFS],
        )
    except ValueError as exc:
        raise LaunchError(f"{spec.name}: {exc}") from None


def _create(ctx: BackendContext) -> XenBackend:
    return XenBackend(ctx.executor, vif_script=ctx.host.labels.get("vif-script"))


BACKEND = BackendType(
    name="xen",
    factory=_create,
    user_net=None,
    local_only=False,
    clones_readdress=True,
    channels="vchan",
)


def _channels(spec: InstanceSpec) -> tuple[tuple[int, ...], tuple[xen_channels.XenLink, ...]]:
    """The spec's channels on Xen: the guest ports served to the host, and the links to
    other guests; refused for a guest with no init of ours."""
    if not spec.channels:
        return (), ()
    if spec.rumprun is not None or spec.initrd is None:
        raise LaunchError("channels on Xen need a Linux image with an initramfs (uniklab's init)")
    ports = tuple(c.port for c in spec.channels if c.dir == "in")
    links = tuple(
        xen_channels.link_of(c.port, c.target, c.peer) for c in spec.channels if c.dir != "in"
    )
    return ports, links


def _channel_initrd(spec: InstanceSpec) -> Path:
    """The image's initramfs with the vchan helper, written to the instance's runtime
    directory (the same bytes for the same image: uploaded to the host once)."""
    from uniklab.bake.vchan import channel_initrd  # the bakers: not on `ps`'s path

    assert spec.initrd is not None
    spec.rundir.mkdir(parents=True, exist_ok=True)
    out = spec.rundir / "initrd.vchan"
    out.write_bytes(channel_initrd(spec.initrd, spec.kernel))
    return out
