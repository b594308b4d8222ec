"""The SSH seam against a real sshd: arguments arrive verbatim, failures are clear, and
`host doctor` reports a host that is not a Xen dom0 with the commands that fix it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.sshd import SshServer
from uniklab.backends.xen_doctor import doctor
from uniklab.cli.main import main
from uniklab.errors import CommandError, HostUnreachableError
from uniklab.hosts.inventory import Host
from uniklab.hosts.ssh import SshExecutor

pytestmark = pytest.mark.root


def _host(s: SshServer, **kw: object) -> Host:
    fields: dict[str, object] = dict(
        name="box",
        ssh="root@127.0.0.1",
        port=s.port,
        identity=str(s.identity),
        known_hosts=str(s.known_hosts),
    )
    fields.update(kw)
    return Host.parse(fields)


NASTY = [
    "a b",
    "$(id)",
    "`id`",
    "it's",
    'say "hi"',
    ";rm -rf /tmp/x",
    "a\\b",
    "*",
    "~",
    "",
    "--",
    "-n",
    "é ü",
    "x\ny",
    "$HOME",
    "|cat",
]


def test_arguments_arrive_verbatim(sshd: SshServer) -> None:
    ex = SshExecutor(_host(sshd))
    out = ex.run(["printf", "%s\\0", *NASTY]).stdout
    assert out.split("\0")[:-1] == NASTY


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
            max_size=12,
        ),
        max_size=4,
    )
)
def test_arguments_arrive_verbatim_property(sshd: SshServer, args: list[str]) -> None:
    ex = SshExecutor(_host(sshd))
    out = ex.run(["printf", "%s\\0", "start", *args]).stdout
    assert out.split("\0")[1:-1] == args


def test_env_cwd_exit_codes(sshd: SshServer) -> None:
    ex = SshExecutor(_host(sshd))
    assert ex.run(["sh", "-c", 'echo "$X"'], env={"X": "a b;c"}).stdout == "a b;c\n"
    assert ex.run(["pwd"], cwd=Path("/tmp")).stdout.strip() == "/tmp"
    with pytest.raises(CommandError) as err:
        ex.run(["sh", "-c", "echo oops >&2; exit 3"])
    assert err.value.returncode == 3 and "oops" in str(err.value) and err.value.host == "box"


def test_upload_is_verbatim(sshd: SshServer, tmp_path: Path) -> None:
    src = tmp_path / "blob"
    src.write_bytes(bytes(range(256)) * 100)
    dest = sshd.workdir / "uploaded blob;x"
    SshExecutor(_host(sshd)).upload(src, str(dest))
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_unreachable_and_wrong_host_key(sshd: SshServer, tmp_path: Path) -> None:
    closed = SshExecutor(_host(sshd, port=1))
    with pytest.raises(HostUnreachableError):
        closed.run(["true"])
    wrong = tmp_path / "known_hosts"
    wrong.write_text(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIBo7kP7nZyLUqt4xmT5pEnr0T0lY2yvDOb2rvRNoCr8c\n"
    )
    with pytest.raises(HostUnreachableError):
        SshExecutor(_host(sshd, known_hosts=str(wrong))).run(["true"])


def test_doctor_on_a_host_without_xen(sshd: SshServer) -> None:
    checks = doctor(SshExecutor(_host(sshd)))
    by_name = {c.name: c for c in checks}
    assert by_name["reachable"].ok
    assert not by_name["xl installed"].ok
    assert "apt-get install" in by_name["xl installed"].fix


def test_cli_host_add_doctor(
    sshd: SshServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "host",
                "add",
                "box",
                "--ssh",
                "root@127.0.0.1",
                "--port",
                str(sshd.port),
                "-i",
                str(sshd.identity),
                "--known-hosts",
                str(sshd.known_hosts),
                "--bmc",
                "172.20.12.156",
            ]
        )
        == 0
    )
    assert main(["host", "doctor", "box"]) == 1
    captured = capsys.readouterr()
    assert "FAIL xl installed" in captured.out and "not prepped" in captured.err
    assert main(["host", "ls", "--json"]) == 0
    assert '"bmc": "172.20.12.156"' in capsys.readouterr().out
    assert main(["host", "rm", "box"]) == 0


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["host", "add", "bad name", "--ssh", "root@10.0.0.1"], "invalid host name"),
        (["host", "add", "h", "--ssh", "root@10.0.0.1;reboot"], "invalid SSH address"),
        (["host", "add", "h", "--ssh", "10.0.0.1"], "USER@ADDRESS"),
        (["host", "add", "h", "--ssh", "root@10.0.0.1", "--port", "0"], "invalid SSH port"),
        (["host", "add", "h", "--ssh", "root@10.0.0.1", "--bmc", "$(reboot)"], "invalid address"),
        (["host", "add", "h", "--ssh", "root@10.0.0.1", "-i", "/nonexistent"], "no such file"),
        (["host", "add", "local"], "always exists"),
        (["host", "add", "h", "--libvirt", "qemu:///system;reboot"], "invalid libvirt URI"),
        (["host", "add", "h", "--libvirt", "http://x/system"], "invalid libvirt URI"),
        (["host", "add", "h", "--libvirt", "qemu+ssh://$(reboot)/system"], "invalid libvirt"),
        (["host", "add", "h", "--libvirt", "qemu+ssh://root@kvm1/system"], "SSH target too"),
        (["host", "add", "h", "--hypervisor", "libvirt"], "needs its URI"),
        (["host", "show", "ghost"], "no such host"),
        (["host", "doctor", "ghost"], "no such host"),
    ],
)
def test_bad_host_input(
    argv: list[str], msg: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) != 0
    assert msg in capsys.readouterr().err
