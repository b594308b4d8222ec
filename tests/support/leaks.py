"""What a test leaves behind: the QEMU processes naming a home, and everything uniklab can
create (rows, files, processes, links, namespaces) measured against a baseline."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path


def qemu_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", "qemu-system"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if marker in ln]


def assert_nothing_left(home: Path) -> None:
    """No QEMU, no runtime directory, no instance row under this UNIKLAB_HOME."""
    assert qemu_processes(str(home)) == []
    run = home / "run"
    assert not run.exists() or list(run.iterdir()) == []
    from uniklab.lab import Lab  # imported when asked: it brings pyroute2
    from uniklab.paths import Paths

    lab = Lab(Paths(home))
    try:
        assert lab.store.instances() == []
    finally:
        lab.close()


def _netns() -> set[str]:
    d = Path("/run/netns")
    return set(os.listdir(d)) if d.is_dir() else set()


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def processes_mentioning(marker: str, names: tuple[str, ...] = ("qemu", "dnsmasq")) -> list[str]:
    """Command lines of QEMU/dnsmasq processes that mention ``marker`` (a UNIKLAB_HOME)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and any(n in cmd.split(" ", 1)[0] for n in names):
            found.append(f"{pid} {cmd[:200]}")
    return found


@dataclass(frozen=True)
class Baseline:
    """What a home held before the faults: anything beyond it is a leak."""

    home: Path
    images: frozenset[str]  # entries of images/
    image_rows: frozenset[tuple[str, str]]
    links: frozenset[str]
    netns: frozenset[str]

    @classmethod
    def take(cls, home: Path) -> Baseline:
        with sqlite3.connect(home / "state.db") as db:
            rows = frozenset(db.execute("SELECT name, tag FROM images").fetchall())
        return cls(
            home,
            frozenset(os.listdir(home / "images")),
            rows,
            frozenset(_links()),
            frozenset(_netns()),
        )

    def leaks(self) -> list[str]:
        """Everything beyond the baseline, one line each (empty: nothing leaked)."""
        out: list[str] = []
        home = self.home
        with sqlite3.connect(home / "state.db") as db:
            for table in ("instances", "networks", "hosts"):
                n = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                if n:
                    out.append(f"{n} {table} row(s)")
            rows = frozenset(db.execute("SELECT name, tag FROM images").fetchall())
        if rows != self.image_rows:
            out.append(f"image rows {sorted(rows ^ self.image_rows)}")
        run = home / "run"
        if run.exists() and os.listdir(run):
            out.append(f"run/ holds {os.listdir(run)}")
        net = home / "net"
        if net.exists() and os.listdir(net):
            out.append(f"net/ holds {os.listdir(net)}")
        extra = set(os.listdir(home / "images")) ^ self.images
        if extra:
            out.append(f"images/ differs: {sorted(extra)}")
        out += [f"process: {p}" for p in processes_mentioning(str(home))]
        links = _links() ^ self.links
        if links:
            out.append(f"links changed: {sorted(links)}")
        ns = _netns() ^ self.netns
        if ns:
            out.append(f"namespaces changed: {sorted(ns)}")
        return out

    def clean(self) -> None:
        """Remove whatever a case leaked (so one leak is reported once, not by every case)."""
        for line in processes_mentioning(str(self.home)):
            os.kill(int(line.split()[0]), 9)
        from uniklab.lab import Lab
        from uniklab.paths import Paths

        lab = Lab(Paths(self.home))
        try:
            for row in lab.store.instances():
                lab.destroy(row.name)
            for net in lab.store.networks():
                lab.networks.rm(net.name, [])
            for name, _doc in lab.store.hosts():
                lab.store.delete_host(name)
            for img in lab.store.images():
                if (img.name, img.tag) not in self.image_rows:
                    lab.store.delete_image(img.name, img.tag)
        finally:
            lab.close()
        for entry in set(os.listdir(self.home / "images")) - self.images:
            shutil.rmtree(self.home / "images" / entry, ignore_errors=True)
