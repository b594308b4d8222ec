"""Synchronous, bounded QMP calls over a unix socket, through the ``qemu.qmp`` library.

asyncio and ``qemu.qmp`` are imported by the first call (tens of milliseconds): of the
commands that load the QEMU backend, `uniklab ps` and `logs` never talk QMP.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from uniklab.errors import QmpUnavailable

log = logging.getLogger(__name__)

__all__ = ["QmpUnavailable", "call"]


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
