"""Fixtures for the fuzz tests: the JSON harness, built once per session with sanitizers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.harness import JsonHarness, SanitizersUnavailable, build_harness


@pytest.fixture(scope="session")
def json_harness_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_harness(tmp_path_factory.mktemp("json-harness"))
    except SanitizersUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def json_harness(
    json_harness_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JsonHarness]:
    harness = JsonHarness(json_harness_binary, tmp_path_factory.mktemp("json-harness-run"))
    try:
        yield harness
    finally:
        harness.close()
