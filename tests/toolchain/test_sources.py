"""Where rumprun's sources come from: --source (tarball, a directory holding it, an unpacked
tree), then $UNIKLAB_RUMPRUN_SOURCES, then a development checkout's shared copy, then a clone;
a tarball must have the pinned sha256; every failure is one line."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from tests.toolchain.conftest import fake_tree, shared_sources
from uniklab.cli.main import main
from uniklab.errors import BakeError, UsageError
from uniklab.toolchain import sources


@pytest.fixture
def pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small tarball of a fake tree, pinned in place of the real one; no ambient sources."""
    tree = fake_tree(tmp_path / "t")
    ball = tmp_path / "dl" / "rumprun-test-src.tar.gz"
    ball.parent.mkdir()
    with tarfile.open(ball, "w:gz") as tf:
        tf.add(tree, arcname="rumprun")
    digest = hashlib.sha256(ball.read_bytes()).hexdigest()
    pin = sources.Pin("rumprun", ball.name, "rumprun", digest, "https://example.invalid/r", "abc")
    monkeypatch.setattr(sources, "RUMPRUN", pin)
    monkeypatch.delenv(sources.ENV, raising=False)
    monkeypatch.setattr(sources, "dev_sources", lambda: tmp_path / "no-checkout-copy")
    return ball


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_tarball_given_directly(pinned: Path) -> None:
    src = sources.resolve_rumprun(pinned, fetch=False)
    assert (src.kind, src.path) == ("tarball", pinned)
    assert src.digest == f"sha256:{sources.RUMPRUN.sha256}"


def test_directory_holding_the_tarball(pinned: Path) -> None:
    src = sources.resolve_rumprun(pinned.parent, fetch=False)
    assert (src.kind, src.path) == ("tarball", pinned)


def test_unpacked_tree_or_its_parent(tmp_path: Path, pinned: Path) -> None:
    tree = fake_tree(tmp_path / "mine")
    for given in (tree, tree.parent):
        src = sources.resolve_rumprun(given, fetch=False)
        assert (src.kind, src.path) == ("directory", tree)
        assert src.digest.startswith("tree:")


def test_environment_variable(pinned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.ENV, str(pinned.parent))
    assert sources.resolve_rumprun(fetch=False).path == pinned


def test_flag_wins_over_environment(
    tmp_path: Path, pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sources.ENV, str(tmp_path / "elsewhere"))
    assert sources.resolve_rumprun(pinned, fetch=False).path == pinned


def test_checkout_copy_is_the_default(pinned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "dev_sources", lambda: pinned.parent)
    assert sources.resolve_rumprun(fetch=False).path == pinned


def test_bad_sha256_is_one_line(tmp_path: Path, pinned: Path) -> None:
    bad = tmp_path / "bad" / pinned.name
    bad.parent.mkdir()
    bad.write_bytes(pinned.read_bytes() + b"\0")
    with pytest.raises(BakeError) as exc:
        sources.resolve_rumprun(bad.parent, fetch=False)
    line = _one_line(exc)
    assert "sha256" in line and sources.RUMPRUN.sha256 in line and str(bad) in line


def test_missing_sources_without_fetch_is_one_line(pinned: Path) -> None:
    with pytest.raises(BakeError) as exc:
        sources.resolve_rumprun(fetch=False)
    line = _one_line(exc)
    assert "--source" in line and sources.ENV in line and sources.RUMPRUN.tarball in line


def test_missing_sources_and_failed_clone_is_one_line(
    pinned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*_a: object, **_k: object) -> sources.RumprunSource:
        raise BakeError("fetching https://example.invalid/r failed: git exited 128")

    monkeypatch.setattr(sources, "clone_rumprun", offline)
    with pytest.raises(BakeError) as exc:
        sources.resolve_rumprun()
    line = _one_line(exc)
    assert "git exited 128" in line and "--source" in line and sources.ENV in line


def test_nonexistent_or_unusable_source_is_a_usage_error(tmp_path: Path, pinned: Path) -> None:
    with pytest.raises(UsageError) as exc:
        sources.resolve_rumprun(tmp_path / "nope", fetch=False)
    assert "no such file or directory" in _one_line(exc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as exc:
        sources.resolve_rumprun(tmp_path / "empty", fetch=False)
    assert "neither" in _one_line(exc)


def test_tree_digest_follows_content_not_build_output(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    before = sources.tree_digest(tree)
    (tree / "obj-amd64-hw").mkdir()
    (tree / "obj-amd64-hw" / "x.o").write_bytes(b"obj")
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    assert sources.tree_digest(tree) == before
    (tree / "build-rr.sh").write_text("#!/bin/sh\necho changed\n")
    assert sources.tree_digest(tree) != before


def test_cli_bad_source_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["toolchain", "build", "rumprun", "--source", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == UsageError.exit_code
    assert err.startswith("error: --source") and err.count("\n") == 1


def test_shared_copy_has_the_pinned_digests() -> None:
    shared = shared_sources()
    for pin in sources.PINS:
        assert sources.tarball(pin, shared) == shared / pin.tarball
    src = sources.resolve_rumprun(shared / sources.RUMPRUN.tarball, fetch=False)
    assert src.kind == "tarball"
