"""When `lab up` calls the virtual Xen host ready: once its Xen backend, over ssh, reads the
host's facts (answered here as the real dom0 answered, tests/fixtures/xen/xl_info.txt);
not before the dom0's init says sshd runs; and, when it never is, one error naming the lab
and the last thing that went wrong.  No QEMU and no ssh: a fake dom0 answers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from uniklab.backends.xen import XenBackend
from uniklab.bake import dom0
from uniklab.errors import CommandError, HostUnreachableError, LaunchError, ProbeTimeoutError
from uniklab.executor import DEFAULT_TIMEOUT, Result
from uniklab.hosts import virtual_xen
from uniklab.hosts.inventory import Host
from uniklab.hosts.virtual_xen import VirtualXenFiles, VirtualXenHost
from uniklab.paths import Paths

XL_INFO = (Path(__file__).parent.parent / "fixtures" / "xen" / "xl_info.txt").read_text()
BOOTING = "(XEN) Xen version 4.17.7 (Debian 4.17.7+dfsg-1)\n"
READY = f"{BOOTING}{dom0.READY_MARK}\n"


class Dom0:
    """The lab's dom0 as an Executor: each command gets the next answer (text for stdout, or
    an error to raise); the last answer repeats."""

    def __init__(self, host: Host, answers: Sequence[str | Exception]) -> None:
        self.host = host
        self.name = host.name
        self.answers = list(answers)
        self.calls: list[tuple[list[str], float]] = []

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
        self.calls.append((args, timeout))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return Result(args, 0, answer, "")


@pytest.fixture
def lab(tmp_path: Path) -> tuple[VirtualXenFiles, VirtualXenHost]:
    files = VirtualXenFiles(Paths(tmp_path), "xenlab")
    files.dir.mkdir(parents=True)
    files.identity.write_text("key\n")
    files.known_hosts.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA\n")
    host = VirtualXenHost(
        name="xenlab",
        ssh_target="root@127.0.0.1",
        ssh_port=2222,
        identity_file=str(files.identity),
        known_hosts=str(files.known_hosts),
    )
    return files, host


def boot(
    monkeypatch: pytest.MonkeyPatch,
    host: VirtualXenHost,
    answers: Sequence[str | Exception],
    *,
    console: str = READY,
    running: bool = True,
) -> Dom0:
    """A lab whose QEMU runs (or not), whose console shows ``console``, and whose dom0
    answers ``answers``."""
    dom = Dom0(Host.parse(host.inventory_fields()), answers)
    monkeypatch.setattr(virtual_xen, "executor", lambda host, **kw: dom)
    monkeypatch.setattr(virtual_xen.qemu_process, "running", lambda pid, run: running)
    monkeypatch.setattr(virtual_xen, "_console_tail", lambda files, lines=30: console)
    monkeypatch.setattr(virtual_xen.time, "sleep", lambda s: None)
    return dom


def test_the_lab_asks_the_backend_its_inventory_entry_names(
    lab: tuple[VirtualXenFiles, VirtualXenHost],
) -> None:
    files, host = lab
    [xl] = virtual_xen._backends(files, host)
    assert isinstance(xl, XenBackend)
    # lab up --libvirt: libvirt's backend too, on the dom0's libvirtd, its host key checked
    # against the lab's own known_hosts (the libssh transport), not the user's.
    xl, lv = virtual_xen._backends(files, dataclasses.replace(host, libvirt=True))
    assert isinstance(xl, XenBackend) and lv.name == "libvirt"
    assert lv.uri == (  # type: ignore[attr-defined]
        f"xen+libssh://root@127.0.0.1:2222/system?keyfile={files.identity}"
        f"&known_hosts={files.known_hosts}&sshauth=privkey&proxy=native"
    )


def test_ready_once_the_backend_reads_the_hosts_facts(
    monkeypatch: pytest.MonkeyPatch, lab: tuple[VirtualXenFiles, VirtualXenHost]
) -> None:
    files, host = lab
    refused = HostUnreachableError("xenlab: ssh failed: Connection refused")
    no_xenstore = CommandError(["xl", "info"], 1, "cannot connect to xenstore", host="xenlab")
    dom = boot(monkeypatch, host, [refused, no_xenstore, XL_INFO])
    virtual_xen._wait_ready(files, host, 4242, time.monotonic() + 60)
    # The backend's own question (no command spelled in hosts/), bounded as the probe was.
    assert len(dom.calls) == 3
    assert all(timeout == virtual_xen._SSH_PROBE_TIMEOUT for _argv, timeout in dom.calls)
    assert len({tuple(argv) for argv, _timeout in dom.calls}) == 1


def test_sshd_is_not_asked_before_the_init_says_it_runs(
    monkeypatch: pytest.MonkeyPatch, lab: tuple[VirtualXenFiles, VirtualXenHost]
) -> None:
    files, host = lab
    dom = boot(monkeypatch, host, [XL_INFO], console=BOOTING)
    with pytest.raises(ProbeTimeoutError) as info:
        virtual_xen._wait_ready(files, host, 4242, time.monotonic() - 1)
    assert dom.calls == []
    assert info.value.last_error == "no answer yet"
    assert info.value.console_tail == BOOTING


def test_a_toolstack_that_never_answers_is_one_line_with_the_last_error(
    monkeypatch: pytest.MonkeyPatch, lab: tuple[VirtualXenFiles, VirtualXenHost]
) -> None:
    files, host = lab
    boot(monkeypatch, host, [HostUnreachableError("xenlab: ssh failed: Connection refused")])
    with pytest.raises(ProbeTimeoutError) as info:
        virtual_xen._wait_ready(files, host, 4242, time.monotonic() - 1)
    message = str(info.value)
    assert message.startswith("lab xenlab: the Xen toolstack did not answer over ssh in time")
    assert "\n" not in message
    assert info.value.last_error == "xenlab: ssh failed: Connection refused"


def test_an_answer_without_the_hosts_memory_is_not_ready(
    monkeypatch: pytest.MonkeyPatch, lab: tuple[VirtualXenFiles, VirtualXenHost]
) -> None:
    files, host = lab
    boot(monkeypatch, host, [""])
    with pytest.raises(ProbeTimeoutError) as info:
        virtual_xen._wait_ready(files, host, 4242, time.monotonic() - 1)
    assert "without the host's memory" in info.value.last_error


def test_a_qemu_that_exits_while_booting_is_a_launch_error(
    monkeypatch: pytest.MonkeyPatch, lab: tuple[VirtualXenFiles, VirtualXenHost]
) -> None:
    files, host = lab
    dom = boot(monkeypatch, host, [XL_INFO], running=False)
    with pytest.raises(LaunchError, match="the lab's QEMU exited while booting"):
        virtual_xen._wait_ready(files, host, 4242, time.monotonic() + 60)
    assert dom.calls == []
