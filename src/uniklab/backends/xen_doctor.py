"""Is a Xen host prepped to run unikernels?  The runbook's dom0 prep, as checks with fixes.

Each check says what it found and, when it fails, the exact commands that fix it.
"""

from __future__ import annotations

from uniklab.backends import xl_parse
from uniklab.backends.base import Check
from uniklab.errors import CommandError, HostUnreachableError, UniklabError
from uniklab.executor import Executor

MIN_FREE_MB = 64
# Is a process named $1 (or o$1, the OCaml xenstored) running?  Shell builtins and /proc
# only, so it works on a minimal dom0 without procps.
_RUNNING = (
    'for f in /proc/[0-9]*/comm; do read -r c < "$f" 2>/dev/null || continue; '
    '[ "$c" = "$1" ] || [ "$c" = "o$1" ] && exit 0; done; exit 1'
)


def _has(ex: Executor, tool: str) -> bool:
    # The script is fixed; the tool name travels as a positional argument.
    r = ex.run(["sh", "-c", 'command -v "$1"', "sh", tool], timeout=15, check=False)
    return r.returncode == 0


def doctor(ex: Executor, *, bridge: str = "xenbr0") -> list[Check]:
    checks: list[Check] = []
    try:
        ex.run(["true"], timeout=20)
    except (HostUnreachableError, CommandError) as exc:
        return [
            Check(
                "reachable",
                False,
                str(exc),
                "check the SSH target, key and that sshd runs on the host",
            )
        ]
    checks.append(Check("reachable", True, f"commands run on {ex.name}"))
    apt = "apt-get install -y xen-utils-4.17 xen-hypervisor-4.17-amd64"
    if not _has(ex, "xl"):
        checks.append(
            Check(
                "xl installed",
                False,
                "no `xl` on PATH",
                f"{apt} && reboot into Xen (GRUB entry 'Debian GNU/Linux, with Xen')",
            )
        )
        return checks
    checks.append(Check("xl installed", True, "xl found"))
    info: dict[str, str] = {}
    try:
        info = xl_parse.parse_info(ex.run(["xl", "info"], timeout=30).stdout)
        checks.append(
            Check(
                "Xen running",
                True,
                f"Xen {info.get('xen_version', '?')}, dom0 kernel {info.get('release', '?')}",
            )
        )
    except (CommandError, UniklabError) as exc:
        checks.append(
            Check(
                "Xen running",
                False,
                f"`xl info` failed: {exc}",
                "boot the host into Xen (this kernel is not a dom0)",
            )
        )
        return checks
    for daemon, fix in (
        ("xenstored", "systemctl start xenstored || /etc/init.d/xencommons start"),
        ("xenconsoled", "systemctl start xenconsoled"),
    ):
        r = ex.run(["sh", "-c", _RUNNING, "sh", daemon], timeout=15, check=False)
        checks.append(
            Check(
                f"{daemon} running",
                r.returncode == 0,
                "running" if r.returncode == 0 else "not running",
                fix,
            )
        )
    r = ex.run(["ip", "-o", "link", "show", "dev", bridge], timeout=15, check=False)
    checks.append(
        Check(
            f"bridge {bridge}",
            r.returncode == 0,
            "present" if r.returncode == 0 else "missing",
            f"ip link add {bridge} type bridge && ip link set {bridge} up "
            f"(and enslave the data NIC: ip link set eth0 master {bridge})",
        )
    )
    for tool in ("ip", "sha256sum"):
        ok = _has(ex, tool)
        checks.append(
            Check(
                f"{tool} installed",
                ok,
                "found" if ok else "missing",
                "apt-get install -y iproute2 coreutils",
            )
        )
    try:
        free = int(info.get("free_memory", "0"))
    except ValueError:
        free = 0
    checks.append(
        Check(
            "free memory",
            free >= MIN_FREE_MB,
            f"{free} MB free for guests",
            "lower dom0_mem on Xen's command line, or destroy idle domains",
        )
    )
    return checks
