"""The host inventory over the state store, and the executor that reaches each host."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from uniklab.errors import ConflictError, NotFoundError, StoreError, UsageError
from uniklab.executor import Executor, local
from uniklab.hosts.inventory import Host, HostFieldError
from uniklab.state.store import Store

LOCAL = "local"
EXPORT_HEADER = "# A uniklab host inventory (uniklab host export): uniklab host import FILE\n\n"


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
            host = Host.parse(fields)
        except HostFieldError as exc:
            raise UsageError(f"host {exc}") from None
        if host.name == LOCAL:
            raise ConflictError("'local' is this machine and always exists")
        self.store.put_host(host.name, host.to_json(), replace=replace)
        return host

    def set(self, name: str, **changes: object) -> Host:
        """Host ``name``'s entry with ``changes`` (fields), checked and stored.  Of
        ``local`` (this machine, in no inventory), only its instance limit is kept."""
        if name == LOCAL and changes.keys() - {"max_instances"}:
            raise UsageError("'local' is this machine: only its --max-instances can be set")
        try:
            host = dataclasses.replace(self.get(name), **changes)  # type: ignore[arg-type]
        except HostFieldError as exc:
            raise UsageError(f"host {exc}") from None
        self.store.put_host(host.name, host.to_json(), replace=True)
        return host

    @staticmethod
    def local() -> Host:
        """This machine: a Xen host when it is a dom0, else a QEMU one."""
        return Host(name=LOCAL, hypervisor="xen" if local_is_dom0() else "qemu")

    def get(self, name: str) -> Host:
        if name == LOCAL:
            try:  # its instance limit, if one was set
                limit = Host.from_json(self.store.host_doc(LOCAL)).max_instances
            except (NotFoundError, StoreError):  # none; or a damaged store (said elsewhere)
                return self.local()
            return dataclasses.replace(self.local(), max_instances=limit)
        return Host.from_json(self.store.host_doc(name))

    def ls(self) -> list[Host]:
        """The inventory (``local``, this machine, is in none)."""
        return [Host.from_json(doc) for name, doc in self.store.hosts() if name != LOCAL]

    def export(self, names: Sequence[str] = ()) -> str:
        """The inventory (or its hosts ``names``) as TOML, one ``[hosts.NAME]`` table each:
        what ``import_`` reads."""
        import tomli_w

        for name in names:
            if name == LOCAL:
                raise UsageError("'local' is this machine: it is in no inventory")
        hosts = [self.get(n) for n in names] if names else self.ls()
        tables: dict[str, dict[str, object]] = {}
        for h in hosts:
            unset = {"name"} if h.labels else {"name", "labels"}  # TOML has no None, no []
            tables[h.name] = {
                k: v for k, v in h.as_dict().items() if k not in unset and v is not None
            }
        return EXPORT_HEADER + tomli_w.dumps({"hosts": tables})

    def import_(self, text: str, origin: str, *, replace: bool = False) -> list[Host]:
        """Add the hosts of an exported inventory (``origin`` names it in errors): each
        entry is checked first, and none is added if one is wrong or, unless ``replace``,
        already in the inventory."""
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{origin}: not valid TOML: {exc}") from exc
        extra = sorted(doc.keys() - {"hosts"})
        if extra:
            raise UsageError(f"{origin}: {extra[0]}: unknown key (an inventory has [hosts.NAME])")
        tables = doc.get("hosts", {})
        if not isinstance(tables, dict):
            raise UsageError(f"{origin}: hosts: a table of [hosts.NAME] tables")
        hosts = []
        for name, fields in tables.items():
            where = f"{origin}: hosts.{name}"
            if not isinstance(fields, dict):
                raise UsageError(f"{where}: a table of the host's fields")
            if "name" in fields:
                raise UsageError(f"{where}.name: unknown key (the table's name is the host's)")
            try:
                host = Host.parse({**fields, "name": name})
            except HostFieldError as exc:
                raise UsageError(f"{where}.{exc}") from exc
            if host.name == LOCAL:
                raise ConflictError(f"{where}: 'local' is this machine and always exists")
            hosts.append(host)
        taken = sorted({h.name for h in hosts} & {name for name, _ in self.store.hosts()})
        if taken and not replace:
            raise ConflictError(
                f"{origin}: already in the inventory: {', '.join(taken)} (--replace replaces them)"
            )
        self.store.put_hosts({h.name: h.to_json() for h in hosts}, replace=replace)
        return hosts

    def rm(self, name: str, users: list[str]) -> Host:
        host = self.get(name)
        if users:
            raise ConflictError(f"host {name} runs: {', '.join(users)} (destroy them first)")
        self.store.delete_host(name)
        return host

    @staticmethod
    def executor(host: Host) -> Executor:
        if host.is_local:
            return local
        from uniklab.hosts.ssh import SshExecutor  # only remote hosts need it

        return SshExecutor(host)
