"""Running a ``uniklab test`` spec: bring up networks and instances, run the host-side test
commands with the instances' addresses in their environment, report as JUnit XML, and
always tear everything down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import string
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from uniklab import signals
from uniklab.api import Client, Instance
from uniklab.backends import registry
from uniklab.errors import CommandError, NotFoundError, UniklabError
from uniklab.executor import local
from uniklab.lab import tail
from uniklab.net import netns
from uniklab.net.service import NetworkSpec
from uniklab.testing import session as owner
from uniklab.testing.spec import InstanceDecl, Spec, TestDecl

log = logging.getLogger(__name__)

Outcome = Literal["passed", "failed", "error", "skipped"]
OUTPUT_LIMIT = 64 * 1024


@dataclass
class CaseResult:
    name: str
    classname: str
    outcome: Outcome
    seconds: float = 0.0
    message: str = ""
    detail: str = ""
    stdout: str = ""
    stderr: str = ""


@dataclass
class SuiteResult:
    name: str
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0
    started: float = field(default_factory=time.time)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for c in self.cases if c.outcome == outcome)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0 and self.count("error") == 0


def instance_env(decl: InstanceDecl, inst: Instance, ports: list[int]) -> dict[str, str]:
    """NAME_HOST, NAME_PORT, NAME_ADDR (first port), NAME_PORT_<guest> for each port,
    NAME_INSTANCE (the real instance name) and NAME_NETNS (if bridged in a namespace);
    NAME_SOCKET_<guest> for each port with a channel and NAME_SOCKET (the first), the only
    ones of an instance with no NIC (``nets = ["none"]``)."""
    p = decl.env_prefix
    env = {f"{p}_INSTANCE": inst.name}
    sockets = [g for g in ports if g in inst.channels]
    for i, guest in enumerate(sockets):
        env[f"{p}_SOCKET_{guest}"] = str(inst.channel_path(guest))
        if i == 0:
            env[f"{p}_SOCKET"] = env[f"{p}_SOCKET_{guest}"]
    if not inst.has_nic:
        return env
    host = inst.address
    env[f"{p}_HOST"] = host
    if inst.netns:
        env[f"{p}_NETNS"] = inst.netns
    for i, guest in enumerate(ports):
        hport = inst.port(guest)
        env[f"{p}_PORT_{guest}"] = str(hport)
        if i == 0:
            env[f"{p}_PORT"] = str(hport)
            env[f"{p}_ADDR"] = f"{host}:{hport}"
    if not ports:
        env[f"{p}_ADDR"] = host
    return env


def _expand(argv: list[str], env: Mapping[str, str]) -> list[str]:
    return [string.Template(a).safe_substitute(env) for a in argv]


def run_test(test: TestDecl, env: Mapping[str, str], base: Path, suite: str) -> CaseResult:
    full = {**os.environ, **env, **test.env}
    argv = netns.exec_prefix(test.netns) + _expand(test.argv, full)
    cwd = (base / test.cwd) if test.cwd else base
    case = CaseResult(test.name, suite, "passed")
    start = time.monotonic()
    try:
        res = local.run(argv, timeout=test.timeout, check=False, env={**env, **test.env}, cwd=cwd)
    except CommandError as exc:
        case.outcome = "failed"
        case.message = (
            f"timed out after {test.timeout:g}s" if exc.timed_out else str(exc) or "failed"
        )
        case.stderr = exc.stderr[-OUTPUT_LIMIT:]
    else:
        case.stdout, case.stderr = res.stdout[-OUTPUT_LIMIT:], res.stderr[-OUTPUT_LIMIT:]
        if res.returncode != 0:
            case.outcome = "failed"
            case.message = f"exited {res.returncode}"
        elif test.expect_stdout is not None and test.expect_stdout not in res.stdout:
            case.outcome = "failed"
            case.message = f"stdout does not contain {test.expect_stdout!r}"
    case.seconds = time.monotonic() - start
    if case.outcome == "failed":
        case.detail = f"$ {' '.join(argv)}\n{case.message}\n{tail(case.stderr, 20)}".rstrip()
    return case


def _image(client: Client, decl: InstanceDecl, base: Path) -> str:
    """A recipe file is relative to the spec's directory; then the test faces' one rule."""
    ref = str(base / decl.image) if decl.image.endswith(".toml") else decl.image
    engine = "" if decl.host == "auto" else registry.for_host(client.lab.hosts.get(decl.host)).name
    return owner.image_for_tests(client.lab, ref, engine)


@contextlib.contextmanager
def _environment(
    client: Client,
    spec: Spec,
    base: Path,
    run_id: str,
    progress: Callable[[str], None],
) -> Iterator[dict[str, str]]:
    """Networks and instances up (ready) for the body; all of them removed after it."""
    made_nets: list[str] = []
    instances: list[Instance] = []
    labels = {**owner.owner_labels(run_id), "uniklab.spec": spec.name or ""}
    try:
        for n in spec.networks:
            progress(f"network {n.name}")
            client.lab.networks.create(NetworkSpec(n.name, n.subnet, n.bridge, n.netns, n.dhcp))
            made_nets.append(n.name)
        env: dict[str, str] = {"UNIKLAB_TEST_RUN": run_id}
        for decl in spec.instances:
            progress(f"instance {decl.name} ({decl.image})")
            ref = _image(client, decl, base)
            inst = client.run(ref, decl.options(name=f"{decl.name}-{run_id}", labels=labels))
            instances.append(inst)
            m = client.lab.image(ref)
            ports = list(dict.fromkeys([*([m.probe.port] if m.probe.port else []), *m.ports]))
            env.update(instance_env(decl, inst, ports))
        yield env
    finally:
        with signals.deferred():
            for inst in reversed(instances):
                try:
                    inst.destroy()
                except UniklabError as exc:
                    log.warning("could not destroy %s: %s", inst.name, exc)
            for name in reversed(made_nets):
                try:
                    client.lab.networks.rm(name, [])
                except NotFoundError:
                    pass
                except UniklabError as exc:
                    log.warning("could not remove network %s: %s", name, exc)


def run_spec(
    spec: Spec,
    client: Client,
    *,
    base: Path,
    suite: str,
    progress: Callable[[str], None] = lambda _m: None,
    result: Callable[[CaseResult], None] = lambda _c: None,
) -> SuiteResult:
    """Run every test of ``spec``; a failed setup fails the run and skips the tests."""
    run_id = secrets.token_hex(3)
    out = SuiteResult(suite)
    start = time.monotonic()
    owner.reap(client.lab)
    setup = CaseResult("setup", suite, "passed")
    try:
        with _environment(client, spec, base, run_id, progress) as env:
            setup.seconds = time.monotonic() - start
            for test in spec.tests:
                progress(f"test {test.name}")
                case = run_test(test, env, base, suite)
                out.cases.append(case)
                result(case)
    except UniklabError as exc:
        if setup.outcome == "passed" and not out.cases:
            setup.outcome, setup.message = "error", str(exc)
            setup.detail = getattr(exc, "console_tail", "") or str(exc)
            setup.seconds = time.monotonic() - start
            out.cases.append(setup)
            result(setup)
            for test in spec.tests:
                skipped = CaseResult(test.name, suite, "skipped", message="setup failed")
                out.cases.append(skipped)
        else:
            raise
    out.seconds = time.monotonic() - start
    return out


def junit_xml(result: SuiteResult) -> ET.ElementTree:
    """JUnit XML as CI systems read it: testsuites > testsuite > testcase."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(
        root,
        "testsuite",
        name=result.name,
        tests=str(len(result.cases)),
        failures=str(result.count("failed")),
        errors=str(result.count("error")),
        skipped=str(result.count("skipped")),
        time=f"{result.seconds:.3f}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(result.started)),
        hostname=socket.gethostname(),
    )
    for c in result.cases:
        tc = ET.SubElement(
            suite, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.3f}"
        )
        if c.outcome in ("failed", "error"):
            tag = "failure" if c.outcome == "failed" else "error"
            ET.SubElement(tc, tag, message=c.message).text = c.detail
        elif c.outcome == "skipped":
            ET.SubElement(tc, "skipped", message=c.message)
        if c.stdout:
            ET.SubElement(tc, "system-out").text = c.stdout
        if c.stderr:
            ET.SubElement(tc, "system-err").text = c.stderr
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(result: SuiteResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_xml(result).write(path, encoding="utf-8", xml_declaration=True)
