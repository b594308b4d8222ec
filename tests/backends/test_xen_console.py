"""The Xen backend's console verbs without a Xen host: the `xl console` command line
`uniklab console` hands the terminal to (over ssh, with a terminal there), and the shell
script that follows a domain's console log on the dom0, run here with the real `sh` and
`tail` and an `xl` that answers `xl list DOMAIN` as long as a file says the domain lives
(the virtual Xen host runs the real one: tests/backends/test_xen_backend.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sshd import SshServer
from uniklab import consoles, executor
from uniklab.backends import xen
from uniklab.backends.base import Handle
from uniklab.backends.xen import XenBackend
from uniklab.executor import Executor, local
from uniklab.hosts.inventory import Host
from uniklab.hosts.ssh import SshExecutor

HANDLE = Handle(pid=None, runtime={"host": "xh", "domain": "r1", "domid": 7}, name="r1")


def test_attach_is_xl_console_over_ssh_with_a_terminal(tmp_path: Path) -> None:
    key = tmp_path / "lab_key"
    key.write_text("")
    host = Host(name="xh", ssh="root@192.0.2.7", port=2222, identity=str(key))
    access = XenBackend(SshExecutor(host)).attach(HANDLE)
    argv = list(access.argv)
    assert access.socket is None
    assert argv[0] == "ssh" and "-t" in argv
    assert argv[argv.index("-e") + 1] == "none"  # ssh's ~. off: every key is the guest's
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == str(key)
    # The domain by id: a later domain may take the name.
    assert argv[-3:] == ["root@192.0.2.7", "--", "xl console 7"]


def test_attach_on_a_dom0_that_is_this_machine() -> None:
    assert XenBackend(local).attach(HANDLE).argv == ("xl", "console", "7")
    by_name = Handle(pid=None, runtime={"domain": "r1"}, name="r1")
    assert XenBackend(local).attach(by_name).argv == ("xl", "console", "r1")


@pytest.fixture
def dom0(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(a bin directory with an `xl` whose `xl list 7` succeeds while ``alive`` exists,
    the alive file, a console log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    alive = tmp_path / "alive"
    xl = bin_dir / "xl"
    xl.write_text(f'#!/bin/sh\n[ "$1" = list ] && [ "$2" = 7 ] && [ -e {alive} ]\n')
    xl.chmod(0o755)
    alive.touch()
    log = tmp_path / "guest-r1.log"
    log.write_bytes(b"old 1\r\nold 2\r\n")
    yield bin_dir, alive, log


def _follow(bin_dir: Path, log: Path, lines: str, ex: Executor = local) -> Iterator[str]:
    """The backend's script as `follow` runs it, where ``ex`` runs commands (this
    machine, or this machine over ssh), with the stub `xl`."""
    path = f"PATH={bin_dir}:/usr/bin:/bin"
    argv = ["env", path, "sh", "-c", xen._FOLLOW, "sh", str(log), "7", lines]
    return consoles.decoded(executor.stream(ex.command(argv)))


def _tails_of(log: Path) -> list[str]:
    r = subprocess.run(["pgrep", "-af", f"tail -n .* -F {log}"], capture_output=True, text=True)
    return r.stdout.splitlines()


def _until(cond: object, what: str) -> None:
    deadline = time.monotonic() + 20
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_follow_script_tails_until_the_domain_is_gone(dom0: tuple[Path, Path, Path]) -> None:
    bin_dir, alive, log = dom0
    chunks = _follow(bin_dir, log, "1")
    assert next(chunks) == "old 2\n"
    with log.open("ab") as out:
        out.write(b"new\r\n")
    assert next(chunks) == "new\n"
    alive.unlink()  # xl destroy: the script ends by itself, with its last words
    with log.open("ab") as out:
        out.write(b"bye\r\n")
    assert "".join(chunks) == "bye\n"
    _until(lambda: not _tails_of(log), "tail outlived the script")


@pytest.mark.parametrize("over", ["local", pytest.param("ssh", marks=pytest.mark.root)])
def test_follow_script_ends_when_its_reader_goes(
    dom0: tuple[Path, Path, Path], over: str, request: pytest.FixtureRequest
) -> None:
    """Over ssh without a terminal the host sees only its pipes close (sshd signals
    nothing): the script and its tail end there all the same (GNU tail by itself, on its
    closed output; the script's `cat` on its closed stdin, for a tail that does not)."""
    bin_dir, _alive, log = dom0
    ex: Executor = local
    if over == "ssh":
        sshd: SshServer = request.getfixturevalue("sshd")
        ex = SshExecutor(
            Host(name="self", ssh="root@127.0.0.1", port=sshd.port,
                 identity=str(sshd.identity), known_hosts=str(sshd.known_hosts))
        )  # fmt: skip
    chunks = _follow(bin_dir, log, "+1", ex)
    assert next(chunks) == "old 1\nold 2\n"
    assert _tails_of(log)
    chunks.close()
    _until(lambda: not _tails_of(log), "tail outlived its reader")
