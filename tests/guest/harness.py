"""Build and drive tests/guest/json_harness.c: the guest init's JSON reader under ASan/UBSan.

One harness process answers many inputs (a request is length-prefixed on its stdin, the
answer is one line), so an example costs a pipe round trip, not a process start.  A crash,
a sanitizer report or a hang becomes a ``HarnessFailure`` naming the input, and the next
input gets a fresh process.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from uniklab.errors import CommandError
from uniklab.executor import local

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "src" / "uniklab" / "guest"
HARNESS_C = Path(__file__).with_name("json_harness.c")
SANITIZE = (
    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1",
    "-fno-omit-frame-pointer", "-std=gnu11", "-Wall", "-Wextra",
)  # fmt: skip
# json.c's allocator calls go to the harness, which counts them and fails one on demand.
ALLOC_SHIM = ("-Dmalloc=fuzz_malloc", "-Dcalloc=fuzz_calloc", "-Dfree=fuzz_free")
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:symbolize=1:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
COMPILE_TIMEOUT = 120.0
# Per input; generous because ASan is slow and inputs reach a megabyte.
ANSWER_TIMEOUT = 20.0


class SanitizersUnavailable(Exception):
    """gcc is missing, or cannot link ASan/UBSan programs here."""


def build_harness(out_dir: Path) -> Path:
    """Compile json.c and the harness with sanitizers into ``out_dir``; return the binary."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SanitizersUnavailable("gcc not found")
    probe = out_dir / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    try:
        local.run([gcc, *SANITIZE, "-o", out_dir / "probe", probe], timeout=COMPILE_TIMEOUT)
    except CommandError as exc:
        raise SanitizersUnavailable(f"gcc cannot build with ASan/UBSan: {exc}") from exc
    obj = out_dir / "json.o"
    binary = out_dir / "json_harness"
    local.run(
        [gcc, *SANITIZE, *ALLOC_SHIM, "-I", GUEST, "-c", "-o", obj, GUEST / "json.c"],
        timeout=COMPILE_TIMEOUT,
    )
    local.run([gcc, *SANITIZE, "-I", GUEST, "-o", binary, HARNESS_C, obj], timeout=COMPILE_TIMEOUT)
    return binary


@dataclass(frozen=True)
class Answer:
    """What json_parse made of one input."""

    ok: bool
    allocations: int  # calls to malloc/calloc that json.c made (the failed one included)
    dump: Any  # the tagged dump (see json_harness.c) when ok
    error: str  # the error message when not ok

    @classmethod
    def parse(cls, line: bytes) -> Answer:
        count, status, rest = line.decode("utf-8").split(" ", 2)
        if status == "OK":
            return cls(True, int(count), json.loads(rest), "")
        if status == "ERR":
            return cls(False, int(count), None, rest)
        raise ValueError(f"bad harness answer {line!r}")


class HarnessFailure(AssertionError):
    """The harness crashed, tripped a sanitizer, broke an invariant or hung on an input."""


def describe(data: bytes, limit: int = 300) -> str:
    shown = repr(data[:limit]) + (f"... ({len(data)} bytes)" if len(data) > limit else "")
    return shown


class JsonHarness:
    """A long-lived ``json_harness --batch`` process, restarted after any failure."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.starts = 0
        self.inputs = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_path = workdir / "stderr-0.log"
        self._buf = b""

    def _start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        self._stderr_path = self.workdir / f"stderr-{self.starts}.log"
        self._buf = b""
        with open(self._stderr_path, "wb") as err:
            self._proc = subprocess.Popen(
                [str(self.binary), "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, **SANITIZER_ENV},
            )
        return self._proc

    def _stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def _fail(self, what: str, data: bytes, fail_at: int) -> HarnessFailure:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        rc = proc.returncode if proc is not None else None
        return HarnessFailure(
            f"json_harness {what} (exit status {rc}) on input {describe(data)}"
            + (f" with allocation {fail_at} failing" if fail_at else "")
            + f"\nstderr:\n{self._stderr()}"
        )

    def parse(self, data: bytes, *, fail_at: int = 0) -> Answer:
        """Feed one document to json_parse; ``fail_at`` makes that allocation fail (1-based)."""
        proc = self._proc if self._proc is not None and self._proc.poll() is None else None
        if proc is None:
            proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        self.inputs += 1
        try:
            proc.stdin.write(struct.pack("<II", len(data), fail_at) + data)
            proc.stdin.flush()
        except BrokenPipeError:
            raise self._fail("died", data, fail_at) from None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                if not sel.select(timeout=ANSWER_TIMEOUT):
                    raise self._fail(f"hung for {ANSWER_TIMEOUT:.0f}s", data, fail_at)
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise self._fail("died", data, fail_at)
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return Answer.parse(line)
        except ValueError as exc:  # e.g. a dump that is not UTF-8: json.c let bad bytes in
            raise AssertionError(
                f"unreadable answer {line[:300]!r} to input {describe(data)}: {exc}"
            ) from exc

    def close(self) -> None:
        """End the process; its exit status carries LeakSanitizer's verdict on the session."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise HarnessFailure("json_harness did not exit at the end of its input") from None
        finally:
            proc.stdout.close()
        if rc != 0:
            raise HarnessFailure(f"json_harness exited {rc} at the end:\n{self._stderr()}")


def run_once(binary: Path, data: bytes, timeout: float = ANSWER_TIMEOUT) -> str:
    """One-shot mode: one process, the document on stdin; returns its one line of output."""
    try:
        proc = subprocess.run(
            [str(binary)],
            input=data,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **SANITIZER_ENV},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessFailure(f"json_harness hung on input {describe(data)}") from exc
    if proc.returncode != 0:
        raise HarnessFailure(
            f"json_harness exited {proc.returncode} on input {describe(data)}\n"
            f"stderr:\n{proc.stderr.decode(errors='replace')[-6000:]}"
        )
    return proc.stdout.decode("utf-8")


class LengthPrefixedHarness:
    """A sanitized C harness that reads length-prefixed inputs on stdin and answers each
    with one line; restarted (and the test failed with its stderr) when it dies."""

    def __init__(self, binary: Path, name: str) -> None:
        self.binary = binary
        self.name = name
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self.binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=SANITIZER_ENV,
        )

    def ask(self, data: bytes) -> str:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
            line = self.proc.stdout.readline().decode()
        except BrokenPipeError:
            line = ""
        if not line:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.proc.kill()
            self.proc = self._start()
            raise AssertionError(f"{self.name} harness died on {data[:120]!r}: {err[-3000:]}")
        return line.strip()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def build_sanitized(out: Path, name: str, sources: list[Path]) -> Path:
    """Build ``name`` from ``sources`` with the sanitizers (skips where they are missing)."""
    try:
        build_harness(out)  # checks gcc can build with the sanitizers
    except SanitizersUnavailable as exc:
        pytest.skip(str(exc))
    binary = out / name
    local.run(["gcc", *SANITIZE, "-I", GUEST, "-o", binary, *sources], timeout=COMPILE_TIMEOUT)
    return binary
