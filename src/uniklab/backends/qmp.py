"""Synchronous, bounded QMP calls over a unix socket, through the ``qemu.qmp`` library.

asyncio and ``qemu.qmp`` are imported by the first call (tens of milliseconds): of the
commands that load the QEMU backend, `uniklab ps` and `logs` never talk QMP.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from uniklab.errors import QmpUnavailable

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

log = logging.getLogger(__name__)

__all__ = ["QmpUnavailable", "call", "session"]

T = TypeVar("T")


async def _call(path: Path, command: str, args: dict[str, Any] | None, timeout: float) -> Any:
    import asyncio

    from qemu.qmp import QMPClient
    from qemu.qmp.error import QMPError

    client = QMPClient("uniklab")
    try:
        await asyncio.wait_for(client.connect(str(path)), timeout)
        return await asyncio.wait_for(client.execute(command, args), timeout)
    finally:
        with contextlib.suppress(QMPError, OSError, TimeoutError, EOFError):
            await asyncio.wait_for(client.disconnect(), timeout)


def call(path: Path, command: str, args: dict[str, Any] | None = None, timeout: float = 3.0) -> Any:
    """Run one QMP command; raise QmpUnavailable if QEMU does not answer in time."""
    import asyncio

    from qemu.qmp.error import QMPError

    log.debug("qmp %s: %s %s", path, command, args or "")
    try:
        return asyncio.run(_call(path, command, args, timeout))
    except (QMPError, OSError, TimeoutError, EOFError) as exc:
        raise QmpUnavailable(f"{command}: {exc or type(exc).__name__}") from exc


async def _session(path: Path, steps: Callable[[QMPClient], Awaitable[T]], timeout: float) -> T:
    import asyncio

    from qemu.qmp import QMPClient
    from qemu.qmp.error import QMPError

    client = QMPClient("uniklab")
    try:
        await asyncio.wait_for(client.connect(str(path)), timeout)
        return await asyncio.wait_for(steps(client), timeout)
    finally:
        with contextlib.suppress(QMPError, OSError, TimeoutError, EOFError):
            await asyncio.wait_for(client.disconnect(), timeout)


def session(
    path: Path, steps: Callable[[QMPClient], Awaitable[T]], *, timeout: float, what: str
) -> T:
    """Several QMP commands on one connection (``steps`` awaits ``client.execute``), all
    within ``timeout`` seconds; QmpUnavailable (saying ``what``) if QEMU fails them."""
    import asyncio

    from qemu.qmp.error import QMPError

    try:
        return asyncio.run(_session(path, steps, timeout))
    except (QMPError, OSError, TimeoutError, EOFError) as exc:
        raise QmpUnavailable(f"{what}: {exc or type(exc).__name__}") from exc


async def ask(
    client: QMPClient, command: str, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A query in a ``session``: its answer, a JSON object."""
    answer = await client.execute(command, args)
    if not isinstance(answer, dict):
        raise QmpUnavailable(f"{command}: not an object: {str(answer)[:100]}")
    return answer
