"""Arguments and environment reach the app VERBATIM, or are refused with a UsageError.

A tiny static program of our own (``argv_env.c``) is baked into an image; it prints its argv
and environ hex-encoded to the console and exits. Hypothesis makes batches of arguments and
variables (unicode, quotes, shell metacharacters, spaces, empty strings); each batch goes into
one real guest under TCG (a few boots in all) and is read back from the console. Batches no
guest can take (a NUL byte, a bad name, too large for the kernel command line) are refused
before anything starts, and leave nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.support.leaks import Baseline
from uniklab.bake import recipe
from uniklab.errors import UsageError
from uniklab.executor import local
from uniklab.lab import Lab, RunOptions
from uniklab.paths import Paths

pytestmark = pytest.mark.faults

HERE = Path(__file__).parent
ENV_NAMES = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,7}\Z")
# Any unicode but NUL (surrogates cannot be UTF-8): that is what a C string can carry.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8)
ARGS = st.lists(TEXT, min_size=1, max_size=8)
ENVS = st.dictionaries(ENV_NAMES, TEXT, min_size=1, max_size=6).filter(
    lambda d: not {"HOME", "PATH"} & set(d)  # the image sets these two: tested apart
)


@pytest.fixture(scope="module")
def echo_home() -> Iterator[Path]:
    """A home with the image 'verbatim': the static argv/env printer."""
    home = Path(tempfile.mkdtemp(prefix="uklv-", dir="/tmp"))
    binary = home / "verbatim"
    local.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(HERE / "argv_env.c")], timeout=120
    )
    lab = Lab(Paths(home))
    try:
        lab.bake_recipe(recipe.from_binary(str(binary), name="verbatim"))
    finally:
        lab.close()
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _read_back(lab: Lab, name: str, timeout: float = 240) -> tuple[list[str], dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        text = lab.logs(name)
        if "VERBATIM-END" in text:
            break
        assert time.monotonic() < deadline, f"no output from the guest:\n{text[-2000:]}"
        time.sleep(0.5)
    args: list[str] = []
    env: dict[str, str] = {}
    for ln in text.replace("\r", "").splitlines():
        tag, _, rest = ln.partition(" ")
        if tag in ("VERBATIM-ARG", "VERBATIM-ENV"):
            value = bytes.fromhex(rest.split(" ")[0]).decode()
            if tag == "VERBATIM-ARG":
                args.append(value)
            else:
                key, _, val = value.partition("=")
                env[key] = val
    return args, env


BOOTED: list[int] = []  # one entry per batch read back from a real guest


def _boot_and_compare(home: Path, args: list[str], env: dict[str, str]) -> None:
    base = Baseline.take(home)
    lab = Lab(Paths(home))
    try:
        try:
            view = lab.run("verbatim", RunOptions(args=args, env=env, wait=False))
        except UsageError as exc:  # refused: only for a batch too large for the command line
            assert "too large" in str(exc)
            assert base.leaks() == []
            return
        got_args, got_env = _read_back(lab, view.name)
        assert got_args == args
        for key, val in env.items():
            assert got_env.get(key) == val, key
        BOOTED.append(len(args) + len(env))
        lab.destroy(view.name)
    finally:
        for row in lab.store.instances():
            lab.destroy(row.name)
        lab.close()
    assert base.leaks() == []


@pytest.mark.e2e
@settings(
    max_examples=2,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is a boot
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=ARGS, env=ENVS)
@example(
    args=["", " ", "a b", "--maxmemory-policy", "$(id)", "é", "🐳", "x\ny\tz"],
    env={"A": "x=y", "B": "", "C": "\\\"'`;|&", "D": "名前 🐳"},
)
def test_args_and_env_arrive_verbatim(
    echo_home: Path, args: list[str], env: dict[str, str]
) -> None:
    _boot_and_compare(echo_home, args, env)


@pytest.mark.e2e
def test_home_and_path_can_be_overridden(echo_home: Path) -> None:
    _boot_and_compare(echo_home, ["--"], {"HOME": "/var/x", "PATH": "/opt/bin"})
    # This batch, and the explicit example above, are small: both must have booted.
    assert len(BOOTED) >= 2, BOOTED


BAD_ARGS = st.lists(TEXT, max_size=4).flatmap(
    lambda good: st.builds(
        lambda bad, i: [*good[:i], bad, *good[i:]],
        st.text(max_size=4).map(lambda s: s + "\0"),
        st.integers(0, len(good)),
    )
)
BAD_ENV_NAMES = st.one_of(
    st.text(max_size=6).map(lambda s: s + "=x"),
    st.just(""),
    st.from_regex(r"\A[0-9][A-Za-z0-9_]{0,4}\Z"),
    st.text(min_size=1, max_size=6).filter(lambda s: not s.isidentifier() or not s.isascii()),
)


@pytest.mark.e2e
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=st.one_of(
        st.builds(lambda a: (a, {}), BAD_ARGS),
        st.builds(lambda k, v: ([], {k: v}), BAD_ENV_NAMES, TEXT),
        st.builds(lambda k, v: ([], {k: v + "\0"}), ENV_NAMES, TEXT),
        st.builds(lambda n: (["x" * 100] * n, {}), st.integers(15, 200)),
    )
)
def test_what_no_guest_can_take_is_refused(
    echo_home: Path, case: tuple[list[str], dict[str, str]]
) -> None:
    """No boot: each of these is a UsageError before (or instead of) the launch."""
    args, env = case
    base = Baseline.take(echo_home)
    lab = Lab(Paths(echo_home))
    try:
        with pytest.raises(UsageError):
            lab.run("verbatim", RunOptions(args=args, env=env, wait=False))
    finally:
        lab.close()
    assert base.leaks() == []
