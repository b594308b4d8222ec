"""The host inventory over the state store, and the executor that reaches each host."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from uniklab import validate
from uniklab.errors import ConflictError, UsageError
from uniklab.executor import Executor, local
from uniklab.hosts.inventory import Host
from uniklab.hosts.ssh import SshExecutor
from uniklab.state.store import Store

LOCAL = "local"


def local_is_dom0(capabilities: Path = Path("/proc/xen/capabilities")) -> bool:
    """This machine is a Xen dom0 (as kraftkit detects it)."""
    try:
        return "control_d" in capabilities.read_text()
    except OSError:
        return False


class HostService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, *, replace: bool = False, **fields: object) -> Host:
        try:
            host = Host.model_validate(fields)
        except ValidationError as exc:
            raise UsageError(f"host {validate.first_problem(exc, '')}") from None
        if host.name == LOCAL:
            raise ConflictError("'local' is this machine and always exists")
        self.store.put_host(host.name, host.model_dump_json(), replace=replace)
        return host

    @staticmethod
    def local() -> Host:
        """This machine: a Xen host when it is a dom0, else a QEMU one."""
        return Host(name=LOCAL, hypervisor="xen" if local_is_dom0() else "qemu")

    def get(self, name: str) -> Host:
        if name == LOCAL:
            return self.local()
        return Host.model_validate_json(self.store.host_doc(name))

    def ls(self) -> list[Host]:
        return [Host.model_validate_json(doc) for _, doc in self.store.hosts()]

    def rm(self, name: str, users: list[str]) -> Host:
        host = self.get(name)
        if users:
            raise ConflictError(f"host {name} runs: {', '.join(users)} (destroy them first)")
        self.store.delete_host(name)
        return host

    @staticmethod
    def executor(host: Host) -> Executor:
        return local if host.is_local else SshExecutor(host)
