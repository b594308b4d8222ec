"""The CLI in-process, for tests that read what it prints."""

from __future__ import annotations

import json

import pytest


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    from uniklab.cli.main import main

    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)
