"""Channels on Xen (issue 18): a guest's TCP port reached over vchan, with no NIC.

Three hops per channel, each one byte stream per connection:

* the guest: ``uniklab-vchan`` (``uniklab.bake.vchan`` puts it in front of the app) reads
  the list this module writes to the domain's xenstore (``uniklab/vchan``: ``PORT:PEER``
  words) and serves, per port, a vchan (a ring in granted pages and an event channel; its
  ring refs under ``/local/domain/DOMID/data/vchan/PORT``, which the guest owns) to dom0,
  joining each vchan to ``127.0.0.1:PORT`` inside the guest;
* the dom0: ``uniklab-vchan --listen`` (the same static binary, uploaded to the host once
  by ``XenBackend.ensure_image``) listens on a UNIX socket
  (``/run/uniklab/channels/OWNER/NAME/PORT.sock``) and opens a vchan per connection; one
  that comes while the guest still boots waits for the guest's server (Xen's
  ``vchan-socket-proxy`` did this before, and kept bytes a client left unread for the next
  client);
* this machine: ``ssh -N -L`` (OpenSSH's streamlocal forwarding, a connection of its own)
  puts each dom0 socket at ``<rundir>/chan-PORT.sock``; on a local dom0 the proxy listens
  there itself.

A link (``--link OTHER:PORT[:LOCAL]``, guest to guest) needs no dom0 hop: the new guest's
uniklab-vchan listens on ``127.0.0.1:LOCAL`` and opens, per connection, a vchan that the
other guest serves it (its list gains ``PORT:NEWDOMID``): the two domains share the ring.

A vchan carries one connection: a channel serves its connections one after the other (a
client that comes while another is connected waits for it), and either end closing gives
the other EOF.
``destroy`` (and ``stop``) end the proxies and the forward; ``gc`` finds the ones no
instance explains (``owned``).  Only ``uniklab.backends.xen`` calls this module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from uniklab import channels, daemons
from uniklab.backends.base import Owned
from uniklab.errors import LaunchError, UniklabError, UsageError
from uniklab.executor import Executor
from uniklab.hosts.ssh import SshExecutor

log = logging.getLogger(__name__)

__all__ = [
    "CHANNEL_LIST",
    "DOM0_ROOT",
    "XenLink",
    "ensure_forward",
    "forward_pidfile",
    "link_of",
    "list_proxies",
    "owned",
    "remove",
    "start",
    "stop",
    "vchan_path",
]

CHANNEL_LIST = "uniklab/vchan"  # in the domain's xenstore directory; uniklab-vchan reads it
DOM0_ROOT = PurePosixPath("/run/uniklab/channels")
DOM0_PEER = 0  # the guest serves its vchans to dom0
FORWARD_START_TIMEOUT = 20.0
PROXY_START_TIMEOUT = 15  # seconds for a dom0 proxy's socket to appear

# The dom0's side of one channel, run as ``sh -c _KEEP_PROXY uniklab-vchan-proxy DOMID PATH
# SOCK LOG HELPER``: ``HELPER --listen`` (uniklab-vchan), started again if it ends, for as
# long as the domain is there; a TERM ends the proxy with the loop.
_KEEP_PROXY = """\
c=
trap 'kill $c 2>/dev/null; exit 0' TERM INT HUP
while xenstore-read "/local/domain/$1/name" >/dev/null 2>&1; do
  rm -f "$3"
  "$5" --listen "$3" "$1" "$2" </dev/null >>"$4" 2>&1 &
  c=$!
  wait "$c"
  sleep 0.2
done
rm -f "$3"
"""
KEEPER = "uniklab-vchan-proxy"  # the keeper loop's $0: how its pid file's process is known
# $1 domid, $2 the guest's vchan path, $3 the socket (NAME.sock), $4 its log, $5 the
# keeper's script, $6 uniklab-vchan on the host: the keeper in the background (its stdio
# off ssh's pipes), its pid in NAME.pid once the socket listens.
_START_PROXY = f"""\
mkdir -p "${{3%/*}}" || exit 1
rm -f "$3"
chmod 755 "$6" || exit 1
sh -c "$5" {KEEPER} "$1" "$2" "$3" "$4" "$6" </dev/null >/dev/null 2>&1 &
p=$!
n=0
while [ ! -S "$3" ]; do
  kill -0 "$p" 2>/dev/null || {{ tail -n 3 "$4" >&2; exit 1; }}
  n=$((n + 1))
  [ "$n" -le {PROXY_START_TIMEOUT * 10} ] || {{ kill "$p"; echo "no socket after \
{PROXY_START_TIMEOUT}s" >&2; exit 1; }}
  sleep 0.1
done
echo "$p" > "${{3%.sock}}.pid"
echo "$p"
"""
# Runs $1 (a shell command) for each proxy whose pid file is in $2 (a directory, with its
# trailing slash) or below, up to three levels (DOM0_ROOT/OWNER/NAME/PORT.pid), with
# $p its pid, $s its socket, $c its command line: only a pid whose command line is still
# that proxy's (a pid file outlives its process).  One read per proxy, not a walk of /proc
# (slow on a dom0 starved by TCG).
_EACH_PROXY = f"""\
for f in "$2"*.pid "$2"*/*.pid "$2"*/*/*.pid; do
  [ -f "$f" ] || continue
  read -r p < "$f" || continue
  s=${{f%.pid}}.sock
  c=$(tr '\\0' ' ' < "/proc/$p/cmdline" 2>/dev/null) || continue
  case "$c" in *" {KEEPER} "*"$s"*) eval "$1" ;; esac
done
"""
_LIST = 'printf \'%s\\t%s\\n\' "$p" "$s"'
_STOP = 'kill "$p" 2>/dev/null'
# $1 a pid, $2 its socket: the proxy stopped if it still serves that socket; the socket,
# its pid file, its log and (once empty) its directory removed.
_REMOVE_PROXY = f"""\
c=$(tr '\\0' ' ' < "/proc/$1/cmdline" 2>/dev/null)
case "$c" in *" {KEEPER} "*"$2"*) kill "$1" ;; esac
d=${{2%/*}} b=${{2##*/}}
rm -f -- "$2" "${{2%.sock}}.pid" "$d/vchan-${{b%.sock}}.log"
rm -d -- "$d" 2>/dev/null
exit 0
"""


def _each_proxy(action: str, where: str) -> list[str]:
    """``sh -c`` running ``action`` for each proxy under ``where`` (``_EACH_PROXY``)."""
    return ["sh", "-c", _EACH_PROXY, "sh", action, where]


def list_proxies(ex: Executor, where: str, *, timeout: float = 30) -> list[tuple[int, str]]:
    """The dom0 proxies under directory ``where`` (a trailing slash): (pid, socket)."""
    r = ex.run(_each_proxy(_LIST, where), timeout=timeout, check=False)
    out = []
    for line in r.stdout.splitlines():
        pid, _, sock = line.partition("\t")
        if pid.isdigit() and sock.startswith(where):
            out.append((int(pid), sock))
    return out


def vchan_path(domid: int, port: int, peer: int = DOM0_PEER) -> str:
    """Where the guest's server of ``port`` for domain ``peer`` publishes its ring refs
    (uniklab-vchan's ``data/vchan/PORT/PEER``, in its own domain's directory)."""
    return f"/local/domain/{domid}/data/vchan/{port}/{peer}"


@dataclass(frozen=True)
class XenLink:
    """``--link OTHER:PORT[:LOCAL]`` on Xen: ``127.0.0.1:LOCAL`` in the new guest reaches
    ``PORT`` of the domain ``other`` (an instance on the same host), vchan to vchan."""

    local: int
    other: str
    port: int


def link_of(local: int, target: str | None, peer: str | None = None) -> XenLink:
    """The link to ``peer`` ("OTHER:PORT", ``ChannelSpec.peer``), or, without one, to the
    instance whose channel socket is ``target`` (``<its rundir>/chan-PORT.sock``): on Xen
    the two domains meet without the host."""
    if peer is not None:
        other, _, port = peer.rpartition(":")
        if other and port.isdigit():
            return XenLink(local, other, int(port))
        raise UsageError(f"link to {peer}: not OTHER:PORT")
    sock = Path(target or "")
    m = re.fullmatch(r"chan-(\d+)\.sock", sock.name)
    if m is None:
        raise UsageError(f"link to {target}: not an instance's channel socket")
    return XenLink(local, sock.parent.name, int(m.group(1)))


def channel_list(ports: Sequence[int], links: Sequence[tuple[XenLink, int]] = ()) -> str:
    """The value of ``CHANNEL_LIST`` (uniklab-vchan's words): a server to dom0 for each
    of ``ports``, a listener for each link (with the other domain's id)."""
    words = [f"{p}:{DOM0_PEER}" for p in ports]
    words += [f"{lk.local}>{domid}/{lk.port}" for lk, domid in links]
    return " ".join(words)


def dom0_dir(owner: str, name: str) -> PurePosixPath:
    return DOM0_ROOT / owner / name


def _pairs(owner: str, name: str, ports: Sequence[int], rundir: Path) -> list[tuple[str, str]]:
    """Per port, the channel's socket here and its dom0 proxy's on a remote host."""
    home = dom0_dir(owner, name)
    return [(str(channels.socket_path(rundir, p)), str(home / f"{p}.sock")) for p in ports]


def forward_pidfile(rundir: Path) -> Path:
    return rundir / "vchan-forward.pid"


def _is_local(ex: Executor) -> bool:
    return not isinstance(ex, SshExecutor)


def start(
    ex: Executor,
    *,
    owner: str,
    name: str,
    domid: int,
    ports: Sequence[int],
    rundir: Path,
    helper: str,
    links: Sequence[tuple[XenLink, int]] = (),
) -> None:
    """Domain ``domid``'s channels, while it is still paused: its list; for each link
    (with the other domain's id) a server there for this domain; the dom0 proxies of its
    ports (``helper``: uniklab-vchan's path on the host) and, for a remote dom0, the
    forward of their sockets to ``rundir``.  A failure leaves no proxy or forward behind."""
    for lk, other in links:
        _add_word(ex, other, f"{lk.port}:{domid}")
    own = channel_list(ports, links)
    ex.run(["xenstore-write", f"/local/domain/{domid}/{CHANNEL_LIST}", own])
    if not ports:
        return
    pairs = _pairs(owner, name, ports, rundir)
    try:
        for port, (here, there) in zip(ports, pairs, strict=True):
            sock = here if _is_local(ex) else there  # a local dom0's proxy listens here
            log_file = PurePosixPath(sock).parent / f"vchan-{port}.log"
            argv = ["sh", "-c", _START_PROXY, "sh", str(domid), vchan_path(domid, port)]
            argv += [sock, str(log_file), _KEEP_PROXY, helper]
            ex.run(argv, timeout=PROXY_START_TIMEOUT + 15)
        if isinstance(ex, SshExecutor):
            _start_forward(ex, pairs, rundir)
    except BaseException:
        stop(ex, owner=owner, name=name, rundir=rundir)
        raise


def _add_word(ex: Executor, domid: int, word: str) -> None:
    """``word`` added to domain ``domid``'s channel list (uniklab-vchan reads it twice a second)."""
    key = f"/local/domain/{domid}/{CHANNEL_LIST}"
    r = ex.run(["xenstore-read", key], check=False)
    if r.returncode != 0:
        raise LaunchError(f"domain {domid} has no channels on {ex.name} (no {key})")
    words = r.stdout.split()
    if word not in words:
        ex.run(["xenstore-write", key, " ".join([*words, word])])


def ensure_forward(
    ex: Executor, *, owner: str, name: str, ports: Sequence[int], rundir: Path
) -> int | None:
    """Start the forward of a live domain's channels again if it is gone (killed behind
    uniklab's back, or its ssh connection dropped): the next command that reconciles the
    instance mends it, as ``channels.ensure_proxy`` does QEMU's proxy.  None for a local
    dom0 (its proxies listen here themselves) or no ports.  Cheap when it runs: a pid
    file read here, no command on the host."""
    if not isinstance(ex, SshExecutor) or not ports:
        return None
    pidfile, marker = forward_pidfile(rundir), str(rundir / "chan-")
    pid = daemons.find(pidfile, marker)
    if pid is not None:
        return pid
    with channels.locked(rundir):
        pid = daemons.find(pidfile, marker)
        if pid is None:
            log.info("the channel forward of %s was gone: starting it again", name)
            pairs = _pairs(owner, name, ports, rundir)
            for local_sock, _ in pairs:  # a dead forward's: not "ready" before ssh binds
                Path(local_sock).unlink(missing_ok=True)
            _start_forward(ex, pairs, rundir)
            pid = daemons.read_pid(pidfile)
        return pid


def _start_forward(ex: SshExecutor, pairs: Sequence[tuple[str, str]], rundir: Path) -> None:
    sockets = [Path(local) for local, _ in pairs]

    def ready(pid: int) -> bool:
        return all(s.is_socket() for s in sockets)

    try:
        daemons.spawn(
            ex.unix_forward_argv(pairs),
            log_path=rundir / "vchan-forward.log",
            pidfile=forward_pidfile(rundir),
            marker=str(sockets[0]),
            ready=ready,
            timeout=FORWARD_START_TIMEOUT,
        )
    except LaunchError as exc:
        raise LaunchError(
            f"{ex.name}: cannot forward the channel sockets here: {exc.output or exc}"
        ) from exc


def stop(ex: Executor, *, owner: str, name: str, rundir: Path | None) -> None:
    """End the forward and the dom0 proxies of domain ``name``'s channels; remove their
    sockets.  Safe to call twice, and with none running."""
    if rundir is not None:
        pid = daemons.read_pid(forward_pidfile(rundir))
        daemons.stop(pid, str(rundir / "chan-"), grace=2.0)
        forward_pidfile(rundir).unlink(missing_ok=True)
        for sock in rundir.glob("chan-*.sock"):
            sock.unlink(missing_ok=True)
    where = f"{dom0_dir(owner, name)}/"
    if _is_local(ex) and rundir is not None:
        ex.run(_each_proxy(_STOP, f"{rundir}/"), check=False)  # a local dom0's proxies
    r = ex.run(_each_proxy(_STOP, where), check=False)
    ex.run(["rm", "-rf", "--", where], check=False)
    if r.returncode != 0:
        log.warning("%s: stopping %s's channel proxies: %s", ex.name, name, r.stderr.strip())


def owned(ex: Executor, owner: str, run_root: Path, *, timeout: float) -> list[Owned]:
    """The dom0 proxies of home ``owner`` and, for a remote dom0, the forwards of that
    home's runtime root ``run_root`` that reach this host: keyed by domain name."""
    out = []
    root = dom0_dir(owner, "")
    for pid, sock in list_proxies(ex, f"{root}/", timeout=timeout):
        name = sock[len(str(root)) + 1 :].split("/")[0]
        detail = f"channel proxy {pid} for domain {name} on {ex.name}"
        out.append(Owned("vchan-proxy", sock, name, detail, ident=pid))
    if isinstance(ex, SshExecutor):
        out += _owned_forwards(ex, run_root)
    return out


def _owned_forwards(ex: SshExecutor, run_root: Path) -> list[Owned]:
    """This machine's channel forwards to ``ex``'s host from runtime root ``run_root``."""
    target = ex.unix_forward_argv([])[-1]
    out = []
    for pid, cmd in daemons.scan("ssh", "StreamLocalBindUnlink=yes", f"{run_root}/"):
        words = cmd.split()
        if not words or words[-1] != target or f"-p {ex.host.port} " not in cmd:
            continue
        at = cmd.find(f"{run_root}/")
        name = cmd[at + len(str(run_root)) + 1 :].split("/")[0]
        detail = f"ssh forward {pid} of {name}'s channels to {ex.name}"
        out.append(Owned("vchan-forward", str(pid), name, detail, ident=pid))
    return out


def remove(ex: Executor, item: Owned, *, timeout: float) -> bool:
    """Remove one of ``owned``'s items (False: not one of them)."""
    if item.kind == "vchan-forward":
        if not daemons.stop(item.ident, "StreamLocalBindUnlink=yes", grace=2.0):
            raise UniklabError(f"ssh forward {item.ident} did not stop")
        return True
    if item.kind == "vchan-proxy":
        # Its pid, if still the proxy of that socket; then the socket, and its directory
        # once empty.
        argv = ["sh", "-c", _REMOVE_PROXY, "sh", str(item.ident), item.name]
        ex.run(argv, timeout=timeout, check=False)
        return True
    return False
