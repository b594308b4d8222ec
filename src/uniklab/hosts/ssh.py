"""Running commands on a remote host with OpenSSH: the same Executor protocol as local.

Each argv is quoted with shlex.join into the one string ssh hands to the remote shell, so
an argument reaches the remote program verbatim whatever it contains.  Host keys are
checked as an SSH user expects: against the user's known_hosts, or the host's own
known_hosts file when the inventory names one (StrictHostKeyChecking=yes then).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
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

    def _options(self) -> list[str]:
        opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            # One connection per host serves a burst of commands (a `ps` runs several): the
            # master lingers CONTROL_PERSIST seconds after the last one, then exits.
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={_control_dir()}/{self._control_key()}",
            "-o",
            f"ControlPersist={CONTROL_PERSIST}",
        ]
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

    def ssh_argv(self, remote: Sequence[str | Path]) -> list[str]:
        assert self.host.ssh is not None
        return [
            "ssh",
            *self._options(),
            "-p",
            str(self.host.port),
            self.host.ssh,
            "--",
            shlex.join(str(a) for a in remote),
        ]

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
        try:
            r = local.run(self.ssh_argv(remote), timeout=timeout, check=False, input=input)
        except CommandError as exc:
            if exc.timed_out:
                raise HostUnreachableError(
                    f"{self.name}: {remote[0]} did not finish within {timeout:.0f}s"
                ) from exc
            raise
        if r.returncode == SSH_UNREACHABLE:
            raise HostUnreachableError(
                f"{self.name}: ssh failed: {r.stderr.strip().splitlines()[-1:] or ['?']}"[:300]
            )
        result = Result(remote, r.returncode, r.stdout, r.stderr)
        if check and r.returncode != 0:
            raise CommandError(remote, r.returncode, r.stderr, host=self.name)
        return result

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

    @contextlib.contextmanager
    def tunnel(self, dest: str, dest_port: int, *, timeout: float = 15.0) -> Iterator[int]:
        """Forward a free 127.0.0.1 port to ``dest:dest_port`` as seen from the host."""
        assert self.host.ssh is not None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local_port = int(s.getsockname()[1])
        argv = [
            "ssh",
            *self._options(),
            "-p",
            str(self.host.port),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{local_port}:{dest}:{dest_port}",
            self.host.ssh,
        ]
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
            yield local_port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
