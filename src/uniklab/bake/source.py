"""Applications built from their Debian source, static with musl: a unikernel's binary.

Debian's own binaries bring their shared libraries (Redis: 2.4 MB of program and 15 MB of
libraries, libcrypto and libsystemd among them).  A recipe's ``[build]`` section instead
names a Debian source package and a make line, as rumprun's toolchain builds Redis for its
unikernel: uniklab fetches the source once per machine (``apt-get source`` through a
private deb-src list made from the host's archives, see ``apt_sources``), unpacks it with
Debian's patches (``dpkg-source -x``), runs the make line (an argv list, never a shell) and
keeps the output in the machine-wide build cache, keyed by the source's .dsc digest, the
make line and the compiler.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from uniklab import buildcache
from uniklab.bake import apt_sources
from uniklab.bake.recipe import BuildSpec
from uniklab.buildcache import Progress
from uniklab.errors import BakeError, CommandError
from uniklab.executor import local

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 300.0
BUILD_TIMEOUT = 30 * 60.0


def cache_root() -> Path:
    return buildcache.root("builds", "UNIKLAB_BUILD_CACHE")


def _compiler_version(compiler: str) -> str:
    try:
        out = local.run([compiler, "--version"], timeout=30).stdout
    except CommandError as exc:
        raise BakeError(f"{compiler} not found (apt-get install musl-tools)") from exc
    return out.splitlines()[0].strip() if out else compiler


def fetch(package: str, root: Path, say: Progress) -> Path:
    """The package's .dsc in ``root/sources/<package>``, fetched once per machine."""
    folder = root / "sources" / package
    found = sorted(folder.glob("*.dsc"))
    if found:
        return found[-1]
    archives = apt_sources.host_archives()
    if not archives:
        raise BakeError("no Debian archive in /etc/apt to fetch sources from")
    with buildcache.locked(root / f"source-{package}.lock", say, f"source {package}"):
        found = sorted(folder.glob("*.dsc"))
        if found:
            return found[-1]
        work = buildcache.staging(root)
        try:
            state = work / "apt"
            for d in ("lists/partial", "cache/archives/partial", "sources.list.d"):
                (state / d).mkdir(parents=True)
            listing = state / "sources.list"
            listing.write_text("".join(a.deb_src() + "\n" for a in archives))
            opts = apt_sources.apt_options(state, listing)
            say(f"fetching the source of {package} (apt-get source)")
            try:
                local.run(["apt-get", "-q", *opts, "update"], timeout=FETCH_TIMEOUT)
                local.run(
                    ["apt-get", "-q", *opts, "source", "--download-only", "--", package],
                    timeout=FETCH_TIMEOUT,
                    cwd=work,
                )
            except CommandError as exc:
                raise BakeError(f"cannot fetch the Debian source of {package}: {exc}") from exc
            shutil.rmtree(state)
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    found = sorted(folder.glob("*.dsc"))
    if not found:
        raise BakeError(f"apt-get source {package} gave no .dsc")
    return found[-1]


def build_key(dsc: Path, spec: BuildSpec, compiler: str) -> str:
    doc = {
        "dsc": hashlib.sha256(dsc.read_bytes()).hexdigest(),
        "build": spec.model_dump(mode="json"),
        "compiler": compiler,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def build(spec: BuildSpec, *, progress: Progress | None = None, root: Path | None = None) -> Path:
    """The built binary of ``spec``: from the cache, or fetched and built now."""
    say = progress or buildcache.quiet
    root = root or cache_root()
    dsc = fetch(spec.debian_source, root, say)
    key = build_key(dsc, spec, _compiler_version(spec.compiler))
    entry = root / key
    output = entry / Path(spec.output).name
    if output.is_file():
        return output
    with buildcache.locked(root / f"{key}.lock", say, spec.debian_source):
        if output.is_file():
            return output
        work = buildcache.staging(root)
        try:
            src = work / "src"
            say(f"unpacking {dsc.name} with Debian's patches")
            try:
                local.run(["dpkg-source", "-x", dsc, src], timeout=FETCH_TIMEOUT, cwd=work)
            except CommandError as exc:
                raise BakeError(f"dpkg-source -x {dsc.name} failed: {exc}") from exc
            lines = _make(spec, src, work / "build.log", say, root)
            built = src / spec.output
            if not built.is_file():
                raise BakeError(f"the build of {spec.debian_source} made no {spec.output}")
            out = work / "out"
            out.mkdir()
            shutil.copy2(built, out / built.name)
            shutil.copy2(work / "build.log", out / "build.log")
            os.rename(out, entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        buildcache.record_units(root, _units(spec), lines)
    log.info("built %s from %s: %s", spec.output, dsc.name, output)
    return output


def _units(spec: BuildSpec) -> str:
    return f"source-{spec.debian_source}"


def _make(spec: BuildSpec, src: Path, log_path: Path, say: Progress, root: Path) -> int:
    """The build command; returns its lines of output, the units of its progress (the
    last completed build's count of the same package is this one's estimate)."""
    jobs = str(os.cpu_count() or 1)
    argv = [arg.replace("{jobs}", jobs) for arg in spec.command]
    step = f"building {spec.debian_source} ({argv[0]})"
    total = buildcache.expected_units(root, _units(spec))
    progress = buildcache.Counter(say, step, buildcache.any_line, total)
    buildcache.run_logged(
        argv,
        what=f"the build of {spec.debian_source}",
        log_path=log_path,
        deadline=time.monotonic() + BUILD_TIMEOUT,
        cwd=src,
        on_output=progress,
        tail=10,
    )
    return progress.done
