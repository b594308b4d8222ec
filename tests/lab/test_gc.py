"""`uniklab gc` finds and removes what no state row explains, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.leaks import assert_nothing_left, qemu_processes
from uniklab.cli.main import main
from uniklab.lab import Lab, RunOptions

pytestmark = pytest.mark.e2e


def test_gc_removes_orphans_only(
    lab: Lab, lab_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keep = lab.run("redis", RunOptions(name="keep", wait=False))
    orphan = lab.run("redis", RunOptions(name="orphan", wait=False))
    # The store forgets the orphan (as if its row were lost): its QEMU runs on.
    lab.store.delete_instance(orphan.row.id)
    (lab_home / "images" / ".tmp-1-deadbeef").mkdir()
    capsys.readouterr()
    assert main(["gc", "--dry-run", "--json"]) == 0
    kinds = sorted(i["kind"] for i in json.loads(capsys.readouterr().out))
    assert kinds == ["process", "rundir", "staging"]
    assert len(qemu_processes(str(lab_home))) == 2  # dry run removed nothing
    assert main(["gc"]) == 0
    assert [p for p in qemu_processes(str(lab_home)) if "/run/" in p]
    assert len(qemu_processes(str(lab_home))) == 1
    assert [v.name for v in lab.ps()] == ["keep"] and keep.row.pid
    capsys.readouterr()
    assert main(["gc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    lab.destroy("keep")
    assert_nothing_left(lab_home)
