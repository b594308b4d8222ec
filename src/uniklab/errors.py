"""The one error tree of uniklab: every failure a caller can catch derives from UniklabError.

The CLI alone maps these to exit codes (see ``uniklab.cli.main``); library code raises them
``from`` their cause and never prints.
"""

from __future__ import annotations

from collections.abc import Sequence


class UniklabError(Exception):
    """Root of every error uniklab raises on purpose."""

    exit_code = 1


class UsageError(UniklabError):
    """The caller asked for something malformed: a bad name, size, port, MAC, option."""

    exit_code = 2


class NotFoundError(UniklabError):
    """A named image, instance, network or host does not exist."""

    exit_code = 3


class ConflictError(UniklabError):
    """The request clashes with what exists: a name in use, a port already bound."""

    exit_code = 4


class HostFullError(ConflictError):
    """A host already runs as many instances as its limit allows (``--max-instances``)."""


class BakeError(UniklabError):
    """An image could not be baked (missing binary, unresolvable library, bad recipe)."""


class CommandError(UniklabError):
    """An external command failed or timed out; carries its argv, exit code and stderr tail."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr: str = "",
        *,
        timed_out: bool = False,
        host: str = "local",
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out
        self.host = host
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        what = "timed out" if timed_out else f"exited {returncode}"
        msg = f"{self.argv[0]} {what}"
        if host != "local":
            msg += f" on {host}"
        if tail:
            msg += f": {tail[0]}"
        super().__init__(msg)


class LaunchError(UniklabError):
    """A hypervisor could not start a guest; carries the command line and console tail."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), output: str = "") -> None:
        self.argv = list(argv)
        self.output = output
        super().__init__(message)


class QmpUnavailable(UniklabError):
    """QEMU's monitor (QMP) did not answer: socket gone, QEMU hung or exiting."""


class HostUnreachableError(UniklabError):
    """A remote host did not answer (SSH connect, auth or timeout)."""


class ProbeTimeoutError(UniklabError):
    """A readiness probe did not succeed in time; carries the last error and console tail."""

    def __init__(self, message: str, *, last_error: str = "", console_tail: str = "") -> None:
        self.last_error = last_error
        self.console_tail = console_tail
        full = message
        if last_error:
            full += f" (last error: {last_error})"
        super().__init__(full)


class StoreError(UniklabError):
    """The state store cannot be used as it is: written by a newer uniklab, or unopenable."""


class StoreDamagedError(StoreError):
    """The state database is not a readable store (garbage, truncated, corrupt pages);
    ``uniklab store rebuild`` makes a new one from what is on disk."""
