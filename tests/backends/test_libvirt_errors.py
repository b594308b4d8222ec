"""libvirt's raw errors (recorded from libvirt 9.0's libxl driver on the virtual Xen host)
as the libvirt backend reads them: no daemon here, a domain whose calls raise them."""

from __future__ import annotations

import libvirt
import pytest

from uniklab.backends import libvirt as lv
from uniklab.backends.base import Handle, Inspection
from uniklab.errors import UniklabError
from uniklab.executor import local

# CI, destroying a guest while another thread followed its console (``inspect`` every
# half second): libvirt's libxl driver lets go of the domain while libxl tears it down,
# and its info call in that window fails so.
DESTROYING = "internal error: libxl_domain_info failed for domain '12'"


def _error(code: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, libvirt.VIR_FROM_LIBXL, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


class _Dying:
    """A domain libvirt still counts as running whose info call fails."""

    def __init__(self, failure: libvirt.libvirtError) -> None:
        self.failure = failure

    def state(self) -> tuple[int, int]:
        return (libvirt.VIR_DOMAIN_RUNNING, 1)

    def info(self) -> list[int]:
        raise self.failure


def _inspect(monkeypatch: pytest.MonkeyPatch, failure: libvirt.libvirtError) -> Inspection:
    backend = lv.LibvirtBackend("xen+ssh://root@h/system", local, kvm=False)
    monkeypatch.setattr(backend, "_domain", lambda _handle: _Dying(failure))
    return backend.inspect(Handle(pid=None, runtime={"domain": "f"}, name="f"))


def test_a_domain_xen_has_ended_under_libvirt_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    insp = _inspect(monkeypatch, _error(libvirt.VIR_ERR_INTERNAL_ERROR, DESTROYING))
    assert not insp.alive and insp.state == "gone"
    assert insp.detail.endswith("is gone from local (xen+ssh://root@h/system) (Xen ended it)")


def test_another_internal_error_is_still_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    other = _error(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: libxenlight failed")
    with pytest.raises(UniklabError, match=r"libxenlight failed$"):
        _inspect(monkeypatch, other)
