"""The Xen backend: PV domains driven with `xl` on a dom0, local or over SSH.

uniklab copies the image to the host once (content-addressed, verified by sha256), writes
the domain config next to it, `xl create`s it, takes `xl list` as the truth for `ps`,
reads the console from xenconsoled's log, and `xl destroy`s.  Everything runs through one
Executor, so the same code drives this machine (when it is a dom0) and remote hosts.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from uniklab import validate
from uniklab.backends import xl_parse
from uniklab.backends.base import Handle, Inspection, InstanceSpec
from uniklab.backends.xen_config import XenDomain, XenVif, build_config
from uniklab.digest import sha256_file
from uniklab.errors import CommandError, LaunchError, UniklabError, UsageError
from uniklab.executor import Executor
from uniklab.hosts.ssh import SshExecutor
from uniklab.net.attach import NicRequest
from uniklab.net.service import ifname

log = logging.getLogger(__name__)

REMOTE_ROOT = PurePosixPath("/var/lib/uniklab")
CONSOLE_DIR = PurePosixPath("/var/log/xen/console")


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

    def _copy(self, source: Path, dest: PurePosixPath) -> None:
        if isinstance(self.ex, SshExecutor):
            self.ex.upload(source, str(dest))
        else:
            shutil.copyfile(source, dest)

    def ensure_image(self, kernel: Path, initrd: Path) -> tuple[PurePosixPath, PurePosixPath]:
        """Copy kernel and initrd to the host once; verify both by digest."""
        want = {"kernel": sha256_file(kernel), "initrd": sha256_file(initrd)}
        folder = REMOTE_ROOT / "images" / want["initrd"][:32]
        targets = {k: folder / k for k in want}
        have = self._remote_hashes(list(targets.values()))
        if all(have.get(str(targets[k])) == want[k] for k in want):
            return targets["kernel"], targets["initrd"]
        self.ex.run(["mkdir", "-p", str(folder)], timeout=30)
        for key, source in (("kernel", kernel), ("initrd", initrd)):
            tmp = PurePosixPath(f"{targets[key]}.part")
            self._copy(source, tmp)
            self.ex.run(["mv", "-f", str(tmp), str(targets[key])], timeout=30)
        have = self._remote_hashes(list(targets.values()))
        bad = [k for k in want if have.get(str(targets[k])) != want[k]]
        if bad:
            raise UniklabError(f"{self.ex.name}: image copy failed verification ({', '.join(bad)})")
        return targets["kernel"], targets["initrd"]

    # -- the Backend protocol ----------------------------------------------------------
    def create(self, spec: InstanceSpec) -> Handle:
        kernel, ramdisk = self.ensure_image(spec.kernel, spec.initrd)
        vifs = []
        for nic in spec.nics:
            if not nic.bridge:
                raise LaunchError("a Xen guest's NIC needs a bridge (--net BRIDGE)")
            vifs.append(XenVif(nic.mac, nic.bridge, self.vif_script))
        cfg_text = build_config(
            XenDomain(
                name=spec.name,
                kernel=str(kernel),
                ramdisk=str(ramdisk),
                cmdline=spec.cmdline,
                memory_mb=spec.memory_mb,
                vcpus=spec.vcpus,
                vifs=vifs,
            )
        )
        cfg = REMOTE_ROOT / "domains" / f"{spec.name}.cfg"
        self.ex.run(["mkdir", "-p", str(cfg.parent)], timeout=30)
        self.ex.run(["sh", "-c", 'cat > "$1"', "sh", str(cfg)], input=cfg_text, timeout=30)
        try:
            self.ex.run(["xl", "create", str(cfg)], timeout=120)
        except CommandError as exc:
            self.ex.run(["rm", "-f", str(cfg)], timeout=30, check=False)
            raise LaunchError(
                f"xl create failed on {self.ex.name}: {exc}", argv=exc.argv, output=exc.stderr
            ) from exc
        domid = self._domid(spec.name)
        return Handle(
            pid=None,
            runtime={"host": self.ex.name, "domain": spec.name, "cfg": str(cfg), "domid": domid},
        )

    def _domains(self) -> list[xl_parse.Domain]:
        return xl_parse.parse_list(self.ex.run(["xl", "list"], timeout=30).stdout)

    def _domid(self, name: str) -> int | None:
        for d in self._domains():
            if d.name == name:
                return d.domid
        return None

    def list(self) -> list[xl_parse.Domain]:
        return self._domains()

    def inspect(self, handle: Handle) -> Inspection:
        name = str(handle.runtime.get("domain"))
        for d in self._domains():
            if d.name == name and d.domid == handle.runtime.get("domid", d.domid):
                return Inspection(
                    alive=d.status not in ("shutdown", "crashed", "dying"),
                    state=d.status,
                    cpu_seconds=d.cpu_seconds,
                    rss_bytes=d.mem_mb * 2**20,
                )
        return Inspection(alive=False, state="gone")

    def console(self, handle: Handle) -> str:
        path = CONSOLE_DIR / f"guest-{handle.runtime.get('domain')}.log"
        r = self.ex.run(["cat", str(path)], timeout=30, check=False)
        return r.stdout

    def destroy(self, handle: Handle, *, timeout: float = 10.0) -> None:
        name = str(handle.runtime.get("domain"))
        if self._domid(name) is not None:
            self.ex.run(["xl", "destroy", name], timeout=max(timeout, 30))
        cfg = handle.runtime.get("cfg")
        if cfg:
            self.ex.run(["rm", "-f", str(cfg)], timeout=30, check=False)
        self.ex.run(["rm", "-f", str(CONSOLE_DIR / f"guest-{name}.log")], timeout=30, check=False)


XenNic = dict[str, str | None]


def xen_plan(requests: Sequence[NicRequest], default_macs: Sequence[str]) -> list[XenNic]:
    """The NICs of a Xen guest: on a Xen host, --net names a bridge there."""
    out: list[XenNic] = []
    for i, req in enumerate(requests):
        addr = None
        if req.ip:
            try:
                addr = str(ipaddress.IPv4Interface(req.ip if "/" in req.ip else f"{req.ip}/24"))
            except ValueError:
                raise UsageError(f"invalid address {req.ip!r}: use e.g. 10.0.0.20/24") from None
        gw = str(ipaddress.IPv4Address(req.gateway)) if req.gateway else None
        out.append(
            {
                "bridge": ifname(req.network),
                "mac": validate.mac(req.mac) if req.mac else default_macs[i],
                "addr": addr,
                "gw": gw,
            }
        )
    macs = [n["mac"] for n in out]
    if len(set(macs)) != len(macs):
        raise UsageError("two NICs of one guest have the same MAC")
    return out
