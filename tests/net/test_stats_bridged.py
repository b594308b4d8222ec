"""`uniklab stats` counts a bridged guest's network bytes (its tap, read in the network's
namespace where QEMU runs), and the count grows with Redis traffic."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.net.test_network import NS, _with_network
from tests.support.cli import cli_json
from uniklab.lab import Lab, RunOptions
from uniklab.net.attach import NicRequest
from uniklab.net.service import NetworkSpec

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture
def lab_net(lab: Lab, lab_home: Path) -> Iterator[Lab]:
    yield from _with_network(lab, lab_home, NetworkSpec("lab", "10.78.0.0/24", "xenbr0", NS))


def _sample(capsys: pytest.CaptureFixture[str], name: str) -> dict[str, Any]:
    samples = cli_json(capsys, "stats", "--no-stream", name)
    assert isinstance(samples, list) and len(samples) == 1
    s: dict[str, Any] = samples[0]
    assert s["name"] == name and s["rss_bytes"] > 0 and s["cpu_percent"] is not None
    return s


def test_bridged_guest_network_bytes_grow(lab_net: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab = lab_net
    lab.run("redis", RunOptions(name="tapped", net=[NicRequest("lab", ip="10.78.0.10/24")]))
    before = _sample(capsys, "tapped")
    assert before["net_rx_bytes"] > 0 and before["net_tx_bytes"] > 0  # the probe's traffic
    value = "v" * 20_000
    script = f"set k {value}\n" + "get k\n" * 20
    subprocess.run(
        ["ip", "netns", "exec", NS, "redis-cli", "-h", "10.78.0.10"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    after = _sample(capsys, "tapped")
    assert after["net_rx_bytes"] >= before["net_rx_bytes"] + len(value)  # SET's value in
    assert after["net_tx_bytes"] >= before["net_tx_bytes"] + 20 * len(value)  # GETs out
    lab.destroy("tapped")
