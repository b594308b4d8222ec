"""Builds from a Debian source package: unpacked with dpkg-source, built with the recipe's
argv, cached machine-wide by the .dsc digest and the build line.

The package here is a real (tiny, native) Debian source package made with
``dpkg-source -b`` and placed where ``fetch`` keeps what ``apt-get source`` downloaded, so
these tests need no network; tests/kernel/test_specialised_e2e.py fetches and builds Redis for real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.progress import Said
from uniklab.bake import source
from uniklab.bake.recipe import BuildSpec
from uniklab.errors import BakeError

CHANGELOG = """\
hello-uk (1.0) unstable; urgency=medium

  * Test package.

 -- uniklab <uniklab@example.org>  Sat, 28 Nov 2026 00:00:00 +0000
"""
CONTROL = """\
Source: hello-uk
Maintainer: uniklab <uniklab@example.org>

Package: hello-uk
Architecture: any
Description: test
 test
"""


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A build cache whose sources/ already holds hello-uk's .dsc and tarball."""
    pkg = tmp_path / "pkg" / "hello-uk-1.0"
    (pkg / "debian" / "source").mkdir(parents=True)
    (pkg / "debian" / "changelog").write_text(CHANGELOG)
    (pkg / "debian" / "control").write_text(CONTROL)
    (pkg / "debian" / "source" / "format").write_text("3.0 (native)\n")
    (pkg / "hello.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("hello from source"); return 0; }\n'
    )
    subprocess.run(["dpkg-source", "-b", pkg.name], cwd=pkg.parent, check=True, capture_output=True)
    root = tmp_path / "cache"
    dest = root / "sources" / "hello-uk"
    dest.mkdir(parents=True)
    for f in pkg.parent.iterdir():
        if f.is_file():
            f.rename(dest / f.name)
    return root


def _spec(*command: str) -> BuildSpec:
    cmd = list(command) or ["musl-gcc", "-static", "-Os", "-s", "-o", "hello", "hello.c"]
    return BuildSpec(debian_source="hello-uk", command=cmd, output="hello")


def test_builds_once_and_reuses_the_result(cache: Path) -> None:
    said = Said()
    out = source.build(_spec(), progress=said, root=cache)
    run = subprocess.run([str(out)], capture_output=True, text=True, check=True)
    assert run.stdout == "hello from source\n"
    assert any("unpacking hello-uk_1.0.dsc" in s for s in said)
    mtime = out.stat().st_mtime_ns
    said.clear()
    assert source.build(_spec(), progress=said, root=cache) == out
    assert out.stat().st_mtime_ns == mtime and not any("building" in s for s in said)
    assert not list(cache.glob(".tmp-*"))


def test_a_different_build_line_is_a_different_entry(cache: Path) -> None:
    a = source.build(_spec(), root=cache)
    b = source.build(_spec("gcc", "-O0", "-o", "hello", "hello.c"), root=cache)
    assert a != b and a.parent.parent == b.parent.parent == cache


def test_a_failed_build_says_why_and_leaves_nothing(cache: Path) -> None:
    with pytest.raises(BakeError, match=r"(?s)build of hello-uk failed \(exit 2\).*nosuch"):
        source.build(_spec("make", "nosuch"), root=cache)
    with pytest.raises(BakeError, match="made no hello"):
        source.build(_spec("true"), root=cache)
    assert not list(cache.glob(".tmp-*"))
    assert [p.name for p in cache.iterdir() if p.is_dir()] == ["sources"]


def test_the_build_runs_argv_without_a_shell(cache: Path) -> None:
    # A shell would run the second command; make sees one odd target name instead.
    with pytest.raises(BakeError, match="failed"):
        source.build(_spec("make", "x; touch /tmp/uniklab-pwned"), root=cache)
    assert not Path("/tmp/uniklab-pwned").exists()
