"""Running commands on a remote host with OpenSSH: the same Executor protocol as local.

Each argv is quoted with shlex.join into the one string ssh hands to the remote shell, so
an argument reaches the remote program verbatim whatever it contains.  Host keys are
checked as an SSH user expects: against the user's known_hosts, or the host's own
known_hosts file when the inventory names one (StrictHostKeyChecking=yes then).

A command's timeout holds on both ends.  Without a tty, sshd does not signal a command when
the client goes, so killing the local ssh alone would leave it running on the host; each
command therefore runs under a small POSIX sh watchdog there (the dom0s uniklab drives need
not have coreutils' `timeout`) that stops it, TERM then KILL, after ``timeout`` seconds.
The local ssh waits a little longer, so the host's verdict normally arrives first; it is
killed only when the host stops answering.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from uniklab.errors import CommandError, HostUnreachableError
from uniklab.executor import DEFAULT_TIMEOUT, Result, local
from uniklab.hosts.inventory import Host

log = logging.getLogger(__name__)

SSH_UNREACHABLE = 255
CONTROL_PERSIST = 15
SERVER_ALIVE_COUNT = 12  # keepalives 5 s apart: a minute
REMOTE_KILL_AFTER = 2  # seconds from the host's SIGTERM to its SIGKILL
# How much longer the local ssh waits than the host's own bound: the kill-after, and room
# for the verdict to travel back.
LOCAL_GRACE = REMOTE_KILL_AFTER + 3.0
REMOTE_TIMED_OUT = 124  # the wrapper's exit status when it stopped the command
TIMEOUT_MARK = "uniklab-timeout:"
# ssh exits 255 when the connection fails, and so may a remote command (`xl` does): the
# wrapper says on stderr that it started, and that an exit 255 is the command's own.
START_MARK = "uniklab-started"
EXIT255_MARK = "uniklab-exit: 255"
RETRY_PAUSE = 1.0  # seconds before the one retry of a command that never reached the host

# $1 seconds, $2 kill-after seconds, then the argv.  coreutils' timeout where the host has
# it (one process, a kernel timer; it signals the command's whole process group).  Else a
# POSIX sh watchdog: it polls once a second and leaves by itself once the command is gone
# (signalling a sleeping timer instead races in dash), tells the main shell it fired with
# SIGUSR1 (which interrupts `wait`, hence the loop), and keeps its stdio on /dev/null so
# sshd never waits for it.  It only signals the command itself, not the command's children.
_WATCHDOG = f"""\
t=$1 k=$2
shift 2
echo {START_MARK} >&2
finish() {{
  [ "$1" = 255 ] && echo "{EXIT255_MARK}" >&2
  exit "$1"
}}
if command -v timeout >/dev/null 2>&1; then
  timeout -k "$k" "$t" "$@"
  r=$?
  [ "$r" = 124 ] || [ "$r" = 137 ] || finish "$r"
else
  f=0
  trap 'f=1' USR1
  exec 3<&0
  "$@" <&3 3<&- &
  c=$!
  exec 3<&-
  (
    n=0
    while [ "$n" -lt "$t" ]; do
      sleep 1
      kill -0 "$c" || exit 0
      n=$((n + 1))
    done
    kill -USR1 $$
    kill -TERM "$c"
    kill -CONT "$c"
    n=0
    while [ "$n" -lt "$k" ]; do
      sleep 1
      kill -0 "$c" || exit 0
      n=$((n + 1))
    done
    kill -KILL "$c"
  ) </dev/null >/dev/null 2>&1 &
  while :; do
    wait "$c" 2>/dev/null
    r=$?
    kill -0 "$c" 2>/dev/null || break
  done
  [ "$f" = 1 ] || finish "$r"
fi
echo "{TIMEOUT_MARK} stopped after ${{t}}s" >&2
exit {REMOTE_TIMED_OUT}
"""


def bounded(argv: Sequence[str], timeout: float) -> list[str]:
    """``argv`` as the host runs it: stopped there after ``timeout`` seconds (at least 1)."""
    seconds = max(1, math.ceil(timeout))
    return ["sh", "-c", _WATCHDOG, "uniklab-timeout", str(seconds), str(REMOTE_KILL_AFTER), *argv]


def _control_dir() -> Path:
    """A private directory for ssh's control sockets (short path: sun_path is 108 bytes)."""
    path = Path(tempfile.gettempdir()) / f"ukl-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise HostUnreachableError(f"{path} is not a private directory of this user")
    return path


class SshExecutor:
    def __init__(self, host: Host, *, connect_timeout: int = 10) -> None:
        if host.ssh is None:
            raise ValueError(f"host {host.name} has no SSH target")
        self.host = host
        self.name = host.name
        self.connect_timeout = connect_timeout

    def _control_key(self) -> str:
        """A shared connection is only reused with the same target, key and host-key file,
        so a stricter known_hosts never rides on a connection checked against another."""
        h = self.host
        ident = f"{h.ssh}|{h.port}|{h.identity}|{h.known_hosts}"
        return hashlib.sha256(ident.encode()).hexdigest()[:20]

    def _options(self, *, shared: bool = True) -> list[str]:
        """ssh's options for this host; ``shared``: over the shared master connection."""
        opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            # A host that does not answer for a minute is gone.  Shorter (it was 15 s) cut
            # the shared connection of a dom0 that was only slow, starved by domUs booting
            # under TCG: every command on it then failed with ssh's bare exit 255.  Each
            # command has its own timeout besides.
            "-o",
            "ServerAliveInterval=5",
            "-o",
            f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
        ]
        # One connection per host serves a burst of commands (a `ps` runs several): the
        # master lingers CONTROL_PERSIST seconds after the last one, then exits.
        opts += (
            [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={_control_dir()}/{self._control_key()}",
                "-o",
                f"ControlPersist={CONTROL_PERSIST}",
            ]
            if shared
            else ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        )
        if self.host.known_hosts:
            opts += [
                "-o",
                f"UserKnownHostsFile={self.host.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
        else:
            opts += ["-o", "StrictHostKeyChecking=accept-new"]
        if self.host.identity:
            opts += ["-i", self.host.identity, "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh_argv(self, remote: Sequence[str | Path], *, tty: bool = False) -> list[str]:
        assert self.host.ssh is not None
        # A terminal there for an interactive program, and no ssh escape (~.): every byte
        # typed is the program's (it has its own way out).
        terminal = ["-t", "-e", "none"] if tty else []
        return [
            "ssh",
            *self._options(),
            *terminal,
            "-p",
            str(self.host.port),
            self.host.ssh,
            "--",
            shlex.join(str(a) for a in remote),
        ]

    def command(self, argv: Sequence[str | Path], *, tty: bool = False) -> list[str]:
        """ssh running ``argv`` on the host, unbounded: the caller ends it (without a tty,
        the host's command must end by itself when its stdin closes)."""
        return self.ssh_argv(argv, tty=tty)

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        remote = [str(a) for a in argv]
        if env:
            remote = ["env", *(f"{k}={v}" for k, v in env.items()), *remote]
        if cwd:
            remote = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", str(cwd), *remote]
        late = f"{self.name}: {remote[0]} did not finish within {timeout:g}s"
        for attempt in (1, 2):
            start = time.monotonic()
            try:
                r = local.run(
                    self.ssh_argv(bounded(remote, timeout)),
                    timeout=timeout + LOCAL_GRACE,
                    check=False,
                    input=input,
                )
            except CommandError as exc:
                if exc.timed_out:
                    raise HostUnreachableError(f"{late} (the host stopped answering)") from exc
                raise
            lines = r.stderr.splitlines()
            started = START_MARK in lines
            own_255 = bool(lines) and lines[-1] == EXIT255_MARK
            stderr = "".join(
                line + "\n" for line in lines if line not in (START_MARK, EXIT255_MARK)
            )
            if r.returncode != SSH_UNREACHABLE or own_255:
                break
            why = (stderr.strip().splitlines() or ["no message from ssh"])[-1]
            if started:
                raise HostUnreachableError(
                    f"{self.name}: the connection broke while {remote[0]} ran: {why}"[:300]
                )
            # The command never reached the host (a shared connection that was closing
            # as this one joined it, or a refused connect): once more, on a new one.
            if attempt == 1:
                log.debug(
                    "%s: ssh failed before %s started (%s); retrying", self.name, remote[0], why
                )
                time.sleep(RETRY_PAUSE)
                continue
            raise HostUnreachableError(f"{self.name}: ssh failed: {why}"[:300])
        last = stderr.rstrip().rpartition("\n")[2]
        # coreutils' timeout exits 124 (or 137) when it stopped the command, as a command
        # may by itself: only one that also took its whole time was stopped.
        stopped = r.returncode == REMOTE_TIMED_OUT and last.startswith(TIMEOUT_MARK)
        if stopped and time.monotonic() - start >= timeout:
            raise HostUnreachableError(f"{late} (stopped on the host)")
        result = Result(remote, r.returncode, r.stdout, stderr)
        if check and r.returncode != 0:
            raise CommandError(remote, r.returncode, stderr, host=self.name)
        return result

    def close(self) -> None:
        """End the shared connection now rather than CONTROL_PERSIST seconds from now."""
        assert self.host.ssh is not None
        argv = ["ssh", *self._options(), "-p", str(self.host.port), "-O", "exit", self.host.ssh]
        local.run(argv, timeout=10, check=False)

    def upload(self, source: Path, dest: str, *, timeout: float = 300) -> None:
        """Copy one file to the host (scp over SFTP: the path is not shell-parsed)."""
        assert self.host.ssh is not None
        argv = [
            "scp",
            "-q",
            *self._options(),
            "-P",
            str(self.host.port),
            str(source),
            f"{self.host.ssh}:{dest}",
        ]
        r = local.run(argv, timeout=timeout, check=False)
        if r.returncode != 0:
            raise HostUnreachableError(
                f"{self.name}: copying {source.name} failed: {r.stderr.strip()[:200]}"
            )

    def unix_forward_argv(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """ssh holding OpenSSH's streamlocal forwards ``(local socket, host's socket)``,
        in the foreground, for as long as it runs (the caller detaches it).  A connection
        of its own, not the shared master, which ends CONTROL_PERSIST seconds after the
        last command; it ends itself when the host stops answering (ServerAlive)."""
        assert self.host.ssh is not None
        forwards = [a for local_sock, remote in pairs for a in ("-L", f"{local_sock}:{remote}")]
        return self._forward_argv(["-o", "StreamLocalBindUnlink=yes", *forwards], shared=False)

    def _forward_argv(self, forwards: Sequence[str], *, shared: bool = True) -> list[str]:
        """ssh holding ``forwards`` (its -L/-o words) and running no command."""
        assert self.host.ssh is not None
        return [
            "ssh",
            *self._options(shared=shared),
            "-p",
            str(self.host.port),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            *forwards,
            self.host.ssh,
        ]

    @contextlib.contextmanager
    def forward(
        self, dest: str, dest_port: int, *, timeout: float = 15.0
    ) -> Iterator[tuple[str, int]]:
        """Forward a free 127.0.0.1 port to ``dest:dest_port`` as seen from the host."""
        assert self.host.ssh is not None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local_port = int(s.getsockname()[1])
        argv = self._forward_argv(["-L", f"127.0.0.1:{local_port}:{dest}:{dest_port}"])
        log.debug("tunnel: %s", shlex.join(argv))
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise HostUnreachableError(
                        f"{self.name}: ssh tunnel failed: {err.strip()[:200]}"
                    )
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", local_port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise HostUnreachableError(f"{self.name}: ssh tunnel did not come up")
                time.sleep(0.05)
            yield "127.0.0.1", local_port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
