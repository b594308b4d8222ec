"""The guest init refuses a bad "channels" member of its config (one fatal line, the VM
ends), as it does any other bad config; good ones are booted by tests/lab/test_channels.py."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.guest.conftest import GuestFactory

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _param(doc: object) -> str:
    raw = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    return f"uniklab.config={raw}"


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ({"name": "uniklab.1"}, "must be an array"),
        ([{"name": "uniklab.1", "port": 0}], r"channels\[0\]\.port must be a port number"),
        ([{"name": "Bad Name", "port": 1}], r"channels\[0\]\.name must be"),
        ([{"name": "uniklab.1", "port": 1, "dir": "up"}], r"channels\[0\]\.dir must be"),
        ([{"name": "a", "port": 1}, {"name": "a", "port": 2}], r"channels\[1\] repeats"),
    ],
)
def test_bad_channels_are_fatal(guests: GuestFactory, channels: object, message: str) -> None:
    g = guests.boot(None, net=False, extra_append=_param({"v": 1, "channels": channels}))
    g.wait_for(rf"^uniklab-init: fatal: bad config: .*{message}", 150)
    assert g.wait_exit(60) == 0
    assert "uniklab-init: exec" not in g.text()
