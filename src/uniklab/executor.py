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
import tempfile
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

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

    def command(self, argv: Sequence[str | Path], *, tty: bool = False) -> list[str]:
        """The argv that runs ``argv`` where this executor runs commands, for a caller that
        runs it itself for as long as it needs (``stream``, ``hand_over``: no timeout, unlike
        ``run``); ``tty``: with a terminal there (an interactive program)."""
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

    def command(self, argv: Sequence[str | Path], *, tty: bool = False) -> list[str]:
        return [str(a) for a in argv]  # a terminal here is the caller's own


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


STOP_GRACE = 5.0  # seconds a streamed command has to end once told to (TERM, then KILL)


def stream(argv: Sequence[str], *, chunk: int = 65536) -> Generator[bytes, None, None]:
    """Start ``argv`` here (``Executor.command`` puts it on a host) now, and yield its
    output as it comes, until it ends.  Closed early (the reader is done, Ctrl-C), the
    command's stdin is closed and it is stopped: TERM, then KILL.  A command that fails
    on its own raises ``CommandError`` with its stderr."""
    args = [str(a) for a in argv]
    log.debug("stream: %s", shlex.join(args))
    # stderr to a file: a pipe nobody reads would stall a command that says much there.
    err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _pump, or here on failure)
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    except FileNotFoundError as exc:
        err.close()
        raise CommandError(args, 127, f"{args[0]}: command not found") from exc
    return _pump(proc, args, err, chunk)


def _pump(
    proc: subprocess.Popen[bytes], args: list[str], err: IO[bytes], chunk: int
) -> Generator[bytes, None, None]:
    assert proc.stdout is not None
    with err:
        try:
            while data := os.read(proc.stdout.fileno(), chunk):
                yield data
        finally:
            _stop(proc)  # at once when done: a command that closed its stdout gets no more
        if proc.returncode != 0:
            err.seek(0)
            raise CommandError(args, proc.returncode, err.read().decode(errors="replace"))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_GRACE)


def hand_over(argv: Sequence[str]) -> int:
    """Run ``argv`` here on the caller's own terminal (stdin, stdout, stderr) until it
    ends, and return its exit status: an interactive session, which its user ends."""
    args = [str(a) for a in argv]
    log.debug("interactive: %s", shlex.join(args))
    try:
        return subprocess.run(args, check=False).returncode
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: command not found") from exc


local = LocalExecutor()
