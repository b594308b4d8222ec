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

import logging
import re
import time
from collections.abc import Generator, Sequence
from pathlib import Path, PurePosixPath

from uniklab import consoles, executor
from uniklab.backends import netdev, xen_channels, xen_doctor, xl_errors, xl_parse
from uniklab.backends.base import (
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
from uniklab.errors import CommandError, LaunchError, NotFoundError, UniklabError
from uniklab.executor import Executor
from uniklab.guest.console import app_exit_status

log = logging.getLogger(__name__)

REMOTE_ROOT = PurePosixPath("/var/lib/uniklab")
DOMAINS = REMOTE_ROOT / "domains"
CONSOLE_DIR = PurePosixPath("/var/log/xen/console")
OWNER_PREFIX = "# uniklab-owner: "
STOP_POLL = 1.0  # seconds between `xl list`s while a domain shuts down
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


class XenBackend:
    name = "xen"

    def __init__(self, executor: Executor, *, vif_script: str | None = None) -> None:
        self.ex = executor
        self.vif_script = vif_script

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
        vifs = []
        for nic in spec.nics:
            if nic.kind != "host-bridge" or not nic.bridge:
                raise LaunchError("a Xen guest's NIC joins a bridge of its host (--net BRIDGE)")
            vifs.append(XenVif(nic.mac, nic.bridge, self.vif_script))
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
                cmdline=None if rumprun_cfg else _guest_cmdline(spec.cmdline, ports or links),
                memory_mb=spec.memory_mb,
                vcpus=spec.vcpus,
                vifs=vifs,
                disks=[XenDisk(str(d), _xvd(i)) for i, d in enumerate(disks)],
            )
        )
        # An instance's runtime directory lives in its home's runtime root: that names the
        # home without the backend knowing of homes.
        owner = f"{OWNER_PREFIX}{owner_tag(spec.rundir.parent)}\n"
        cfg = cfg_path(spec.name)
        self.ex.run(["mkdir", "-p", str(cfg.parent)], timeout=30)
        self.ex.run(["sh", "-c", 'cat > "$1"', "sh", str(cfg)], input=owner + cfg_text, timeout=30)
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
        domid = self._domid(spec.name)
        runtime: dict[str, object] = {
            "host": self.ex.name,
            "domain": spec.name,
            "cfg": str(cfg),
            "domid": domid,
        }
        if ports or links:
            runtime.update(channels=list(ports), rundir=str(spec.rundir))
        handle = Handle(pid=None, runtime=runtime)
        if paused:
            try:
                if domid is None:
                    raise LaunchError(f"domain {spec.name} vanished after xl create -p")
                if rumprun_cfg is not None:
                    key = f"/local/domain/{domid}/rumprun/cfg"
                    self.ex.run(["xenstore-write", key, rumprun_cfg], timeout=30)
                if ports or links:
                    self._start_channels(handle, domid, ports, links)
                self.ex.run(["xl", "unpause", str(domid)], timeout=60)
            except BaseException:
                self.destroy(handle)
                raise
        return handle

    def _domains(self, timeout: float = 30) -> list[xl_parse.Domain]:
        return xl_parse.parse_list(self.ex.run(["xl", "list"], timeout=timeout).stdout)

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
        cfg = handle.runtime.get("cfg")
        self._remove_files(name, str(cfg) if cfg else None)

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
        info = xl_parse.parse_info(self.ex.run(["xl", "info"], timeout=timeout).stdout)
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
        xen_channels.start(
            self.ex,
            owner=owner_tag(rundir.parent),
            name=self.key(handle),
            domid=domid,
            ports=ports,
            rundir=rundir,
            links=peers,
        )

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
# Removes "$@" and the domain's disk copies, "$0".xvd? ($0: DOMAINS/NAME).
_RM_FILES = 'rm -f -- "$@" "$0".xvd?'
_KERNFS = {"source": "dev", "path": "virtual", "fstype": "kernfs", "mountpoint": "/kern"}


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


BACKEND = BackendType(name="xen", factory=_create, user_net=None, local_only=False)


def _channels(spec: InstanceSpec) -> tuple[tuple[int, ...], tuple[xen_channels.XenLink, ...]]:
    """The spec's channels (``InstanceSpec.channels``) on Xen: the guest ports served to
    the host, and the links to other guests; refused for a guest with no init of ours."""
    chans = getattr(spec, "channels", ())
    if not chans:
        return (), ()
    if spec.rumprun is not None or spec.initrd is None:
        raise LaunchError("channels on Xen need a Linux image with an initramfs (uniklab's init)")
    ports = tuple(int(c.port) for c in chans if c.dir == "in")
    links = tuple(
        xen_channels.link_of(int(c.port), c.target, getattr(c, "peer", None))
        for c in chans
        if c.dir != "in"
    )
    return ports, links


def _guest_cmdline(cmdline: str, channels: object) -> str:
    """``cmdline`` as a Xen guest with channels gets it: its channels travel in xenstore to
    uniklab-vchan, so the guest config's "channels" (the init's virtio-serial helper, which
    would look for ports Xen has not and bind a link's 127.0.0.1:LOCAL first) go."""
    if not channels:
        return cmdline
    from uniklab.guest.config import CMDLINE_KEY, GuestConfig

    words = cmdline.split(" ")
    for i, word in enumerate(words):
        if word.startswith(f"{CMDLINE_KEY}="):
            cfg = GuestConfig.decode(word)
            if getattr(cfg, "channels", None):
                words[i] = cfg.model_copy(update={"channels": []}).encode()
    return " ".join(words)


def _channel_initrd(spec: InstanceSpec) -> Path:
    """The image's initramfs with the vchan helper, written to the instance's runtime
    directory (the same bytes for the same image: uploaded to the host once)."""
    from uniklab.bake.vchan import channel_initrd  # the bakers: not on `ps`'s path

    assert spec.initrd is not None
    out = spec.rundir / "initrd.vchan"
    out.write_bytes(channel_initrd(spec.initrd, spec.kernel))
    return out
