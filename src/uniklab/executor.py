"""The one way uniklab runs external commands: argv lists, a timeout always, stderr captured.

Local execution lives here; remote hosts wrap the same ``Executor`` protocol.  Nothing
else in uniklab calls ``subprocess`` directly (the QEMU backend's detached launch is the
one exception, since it must outlive us; it still goes through ``spawn_detached``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from uniklab.errors import CommandError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class Executor(Protocol):
    """Runs argv lists somewhere (this machine, or a host over SSH)."""

    name: str

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result: ...

    def upload(self, source: Path, dest: str, *, timeout: float = 300) -> None:
        """Copy one local file to ``dest`` where the commands run."""
        ...

    def forward(
        self, dest: str, dest_port: int, *, timeout: float = 15.0
    ) -> AbstractContextManager[tuple[str, int]]:
        """Where this machine connects to reach ``dest:dest_port`` as the executor's host
        sees it (an address here, or a tunnel's end), for as long as the context lasts."""
        ...


class LocalExecutor:
    """Runs commands on this machine."""

    name = "local"

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
        args = [str(a) for a in argv]
        log.debug("run: %s", shlex.join(args))
        full_env = None if env is None else {**os.environ, **env}
        try:
            # Bytes, decoded by hand: text mode would turn a '\r' of the output into '\n'.
            proc = subprocess.run(
                args,
                input=None if input is None else input.encode(),
                capture_output=True,
                timeout=timeout,
                env=full_env,
                cwd=cwd,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise CommandError(args, None, err, timed_out=True) from exc
        except FileNotFoundError as exc:
            raise CommandError(args, 127, f"{args[0]}: command not found") from exc
        stdout = proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
        if check and proc.returncode != 0:
            raise CommandError(args, proc.returncode, stderr)
        return Result(args, proc.returncode, stdout, stderr)

    def upload(self, source: Path, dest: str, *, timeout: float = 300) -> None:
        shutil.copyfile(source, dest)

    @contextlib.contextmanager
    def forward(
        self, dest: str, dest_port: int, *, timeout: float = 15.0
    ) -> Iterator[tuple[str, int]]:
        yield dest, dest_port  # this machine is the host: no tunnel


def spawn_detached(
    argv: Sequence[str], *, log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a process in its own session so it outlives the CLI; output goes to log_path."""
    args = [str(a) for a in argv]
    log.debug("spawn: %s", shlex.join(args))
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )


local = LocalExecutor()
