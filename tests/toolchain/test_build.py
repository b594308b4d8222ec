"""The rumprun toolchain cache without building rumprun: keys, patches on a small fake
tree, build-rr.sh's command line, and a fake build through the cache (entry, log, lock)."""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path

import pytest

from tests.support.progress import Said
from tests.toolchain.conftest import fake_tree, preimage
from uniklab.errors import BakeError, UsageError
from uniklab.toolchain import rumprun as rr
from uniklab.toolchain import sources


def _key(**over: object) -> str:
    args: dict[str, object] = {
        "source_digest": "sha256:aa",
        "platform": "hw",
        "compiler": "gcc 12.2.0; GNU ld 2.40",
        "patches": rr.patches_for("hw"),
    }
    args.update(over)
    return rr.cache_key(**args)  # type: ignore[arg-type]


def test_key_is_stable_and_follows_every_input() -> None:
    base = _key()
    assert base == _key() and len(base) == 16 and int(base, 16) >= 0
    assert _key(source_digest="sha256:bb") != base
    assert _key(compiler="gcc 13.1.0; GNU ld 2.40") != base
    assert _key(platform="xen", patches=rr.patches_for("xen")) != base
    assert _key(patches=[]) != base


def test_key_follows_patch_content(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _key()
    monkeypatch.setattr(rr.Patch, "text", lambda self: "changed\n")
    assert _key() != base


def test_platforms_get_their_patches() -> None:
    hw = [p.name for p in rr.patches_for("hw")]
    xen = [p.name for p in rr.patches_for("xen")]
    assert hw == ["netbsd-setjmp-stack-alignment.patch", "hw-halt-exits-qemu.patch"]
    assert xen[0] == hw[0] and "hw-halt-exits-qemu.patch" not in xen
    for p in rr.PATCHES:
        assert "--- a/" in p.text()


def test_build_argv() -> None:
    argv = rr.build_argv("hw", jobs=2, prefix=Path("/c/rumprun"), objdir=Path("/w/obj"))
    assert argv == [
        "nice", "-n", "19", "env", "HOST_CFLAGS=-O -fcommon",
        "./build-rr.sh", "-j2", "-d", "/c/rumprun", "-o", "/w/obj", "hw", "--",
        "-F", "CFLAGS=-fcommon", "-V", "NOGCCERROR=1", "-F", "CWARNFLAGS=-Wno-error",
    ]  # fmt: skip


def test_patches_apply_to_a_fake_tree(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, "xen")
    rr.apply_patches(tree, rr.patches_for("xen"))
    setjmp = (tree / "src-netbsd/lib/libc/arch/x86_64/gen/__setjmp14.S").read_text()
    assert "subq\t$8,%rsp" in setjmp and "addq\t$8,%rsp" in setjmp
    sigsetjmp = (tree / "src-netbsd/lib/libc/arch/x86_64/gen/__sigsetjmp14.S").read_text()
    assert sigsetjmp.index("subq\t$8,%rsp") < sigsetjmp.index("__sigprocmask14")
    assert "-idirafter ${loc}" in (tree / "build-rr.sh").read_text()
    minios = (tree / "platform/xen/xen/minios.mk").read_text()
    assert "-Werror" not in minios and "-fcommon" in minios


def test_a_patch_that_does_not_apply_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, "hw")
    rr.apply_patches(tree, rr.patches_for("hw"))
    target = tree / "src-netbsd/lib/libc/arch/x86_64/gen/__setjmp14.S"
    applied = target.read_text()
    with pytest.raises(BakeError) as exc:
        rr.apply_patches(tree, rr.patches_for("hw"))  # twice: already applied
    assert "netbsd-setjmp-stack-alignment.patch" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert target.read_text() == applied
    assert not list(tree.rglob("*.rej")) and not list(tree.rglob("*.orig"))


def test_preimage_helper_matches_the_patch_line_numbers() -> None:
    patch = rr.PATCHES[0].text()
    files = preimage(patch)
    setjmp = files["src-netbsd/lib/libc/arch/x86_64/gen/__setjmp14.S"].splitlines()
    assert setjmp[70] == "#ifdef __PIC__"  # hunk '@@ -68,11' : line 71


def test_git_head_for_build_rr(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    rr.ensure_git_head(tree)
    from uniklab.executor import local

    head = local.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=tree)
    assert head.stdout.strip() == "master"
    rr.ensure_git_head(tree)  # idempotent


def test_unknown_platform_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown rumprun platform 'arm'"):
        rr.build("arm", root=tmp_path)


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Sources: a small fake tree; compiler: fixed; build-rr.sh: writes the three tools."""
    tree = fake_tree(tmp_path / "src", "hw")
    src = sources.RumprunSource("directory", tree, "tree:fake")
    monkeypatch.setattr(sources, "resolve_rumprun", lambda *_a, **_k: src)
    monkeypatch.setattr(rr, "compiler_version", lambda *_a: "gcc 12; ld 2.40")
    calls: list[Path] = []

    def run(entry: rr.Toolchain, tree: Path, objdir: Path, *_a: object) -> int:
        assert (tree / ".git").is_dir()  # build-rr.sh's git rev-parse works
        assert "subq" in (tree / "src-netbsd/lib/libc/arch/x86_64/gen/__setjmp14.S").read_text()
        calls.append(tree)
        entry.dir.mkdir(parents=True)
        entry.bin.mkdir(parents=True)
        for tool in (entry.cc, entry.bake, entry.launcher):
            tool.write_text("#!/bin/sh\n")
        log_path = entry.dir.parent / "logs" / f"{entry.name}.log"
        log_path.write_text("built\n")
        return 0  # objects compiled

    monkeypatch.setattr(rr, "_run_build_rr", run)
    return calls


def test_build_then_cached(tmp_path: Path, fake_build: list[Path]) -> None:
    root = tmp_path / "cache"
    said = Said()
    first = rr.build("hw", root=root, progress=said)
    assert first.built_now and first.complete and len(fake_build) == 1
    assert first.dir == root / f"rumprun-hw-{first.key}"
    assert first.cc == first.dir / "rumprun/bin/x86_64-rumprun-netbsd-gcc"
    meta = first.meta()
    assert meta["platform"] == "hw" and meta["key"] == first.key
    assert meta["patches"] == [p.name for p in rr.patches_for("hw")]
    assert first.log_path.read_text() == "built\n"
    assert not list(root.glob(".tmp-*")) and not list((root / "logs").iterdir())
    again = rr.build("hw", root=root)
    assert again == first and not again.built_now and len(fake_build) == 1
    assert rr.cached("hw", root=root) == first
    assert rr.installed(root) == [first]
    assert rr.latest("hw", root) == first and rr.latest("xen", root) is None
    rr.remove(first)
    assert rr.installed(root) == [] and not first.dir.exists()


def test_failed_build_keeps_the_log_and_no_entry(
    tmp_path: Path, fake_build: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(entry: rr.Toolchain, *_a: object) -> None:
        entry.dir.mkdir(parents=True)
        (entry.dir / "half").write_text("")
        log_path = entry.dir.parent / "logs" / f"{entry.name}.log"
        log_path.write_text("nbmake: multiple definition of 'debug_file'\n")
        raise BakeError(f"rumprun hw toolchain build failed (exit 1) (log: {log_path})")

    monkeypatch.setattr(rr, "_run_build_rr", failing)
    root = tmp_path / "cache"
    with pytest.raises(BakeError, match=r"\(log: .*\.log\)"):
        rr.build("hw", root=root)
    assert rr.installed(root) == [] and rr.cached("hw", root=root) is None
    assert not [p for p in root.iterdir() if p.is_dir() and p.name != "logs"]
    (log,) = (root / "logs").iterdir()
    assert "debug_file" in log.read_text()


def test_partial_entry_is_not_listed_and_is_rebuilt(tmp_path: Path, fake_build: list[Path]) -> None:
    root = tmp_path / "cache"
    entry, _ = rr.plan("hw", root=root)
    (entry.bin).mkdir(parents=True)  # a killed build: no toolchain.json
    assert rr.installed(root) == [] and rr.cached("hw", root=root) is None
    assert rr.build("hw", root=root).built_now


def test_second_builder_says_it_waits(tmp_path: Path, fake_build: list[Path]) -> None:
    root = tmp_path / "cache"
    entry, _ = rr.plan("hw", root=root)
    root.mkdir(parents=True)
    held = threading.Event()

    def other_builder() -> None:
        with open(root / f"{entry.name}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            held.set()
            time.sleep(1.0)
            fcntl.flock(fh, fcntl.LOCK_UN)

    t = threading.Thread(target=other_builder)
    t.start()
    held.wait(5)
    said = Said()
    try:
        built = rr.build("hw", root=root, progress=said)
    finally:
        t.join()
    assert "waiting for another build of the rumprun hw toolchain" in said
    assert built.complete


def test_installed_reads_metadata(tmp_path: Path) -> None:
    d = tmp_path / "rumprun-xen-0123456789abcdef"
    d.mkdir()
    (d / "toolchain.json").write_text(json.dumps({"platform": "xen", "key": "0123456789abcdef"}))
    (tmp_path / "rumprun-hw-broken").mkdir()
    (tmp_path / "rumprun-hw-broken" / "toolchain.json").write_text("{")
    assert rr.installed(tmp_path) == [rr.Toolchain("xen", "0123456789abcdef", d)]


def test_build_rr_failure_names_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = "echo '>> Now that we have the appropriate tools'; echo boom >&2; sleep 1; exit 3"
    monkeypatch.setattr(rr, "build_argv", lambda *_a, **_k: ["sh", "-c", script])
    entry = rr.Toolchain("hw", "k", tmp_path / "rumprun-hw-k")
    log_path = tmp_path / "build.log"
    said = Said()
    with pytest.raises(BakeError) as exc:
        rr._run_build_rr(
            entry, tmp_path, tmp_path / "obj", 1, time.monotonic() + 60, log_path, said
        )
    first, *rest = str(exc.value).splitlines()
    assert "exit 3" in first and f"(log: {log_path})" in first and "boom" in rest
    assert "boom" in log_path.read_text()
    assert any(s.startswith("building the rump kernel") for s in said)


def test_cli_ls_and_rm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from uniklab.cli.main import main

    monkeypatch.setenv("UNIKLAB_TOOLCHAIN_CACHE", str(tmp_path))
    entry = rr.Toolchain("xen", "0123456789abcdef", tmp_path / "rumprun-xen-0123456789abcdef")
    entry.bin.mkdir(parents=True)
    entry.cc.write_bytes(b"x" * 1000)
    meta = {"platform": "xen", "key": entry.key, "built_at": "2026-01-02T03:04:05+00:00"}
    entry.meta_path.write_text(json.dumps(meta))
    assert main(["toolchain", "ls", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["platform"] == "xen" and row["key"] == entry.key
    assert row["path"] == str(entry.prefix) and row["size"] >= 1000
    assert main(["toolchain", "ls"]) == 0
    assert entry.key in capsys.readouterr().out
    assert main(["toolchain", "rm", "rumprun", "--platform", "hw"]) == 3
    assert "no rumprun toolchain built for platform hw" in capsys.readouterr().err
    assert main(["toolchain", "rm", "rumprun", "--platform", "xen"]) == 0
    assert not entry.dir.exists()
