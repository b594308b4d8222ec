"""Fuzz the Python-side parsers of untrusted text: recipes (TOML a user hands over) and
the host's apt sources.  Whatever comes in, a recipe parses or fails with one BakeError
line; the apt parsers never raise and only return archives with a URI and a suite."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.budget import FUZZ
from uniklab.bake import apt_sources, recipe
from uniklab.errors import BakeError

pytestmark = pytest.mark.fuzz

KEYS = [
    "name", "description", "binary", "install_as", "package", "args", "env", "workdir",
    "ports", "probe", "memory", "min_memory", "modules", "libs", "files", "dirs", "users",
    "groups", "docroot", "page", "build", "bogus",
]  # fmt: skip
SCALARS = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False),
    st.sampled_from(["/bin/true", "/usr/bin/redis-server", "../x", "/dev/x", "6379", "64M"]),
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*KEYS, "kind", "port", "dest", "src", "content"]), inner)
    ),
    max_leaves=12,
)
DOCS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)


def _toml(doc: dict[str, Any]) -> str:
    """A rough TOML writer: enough to reach the model's validators with odd values."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.encode("unicode_escape").decode().replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"

    return "".join(f"{k} = {value(v)}\n" for k, v in doc.items())


def _one_line_error(text: str) -> None:
    try:
        recipe.parse(text, "fuzz.toml")
    except BakeError as exc:
        assert "\n" not in str(exc).strip() or "not valid TOML" in str(exc), str(exc)


@FUZZ
@given(DOCS)
def test_recipe_documents_parse_or_fail_with_one_line(doc: dict[str, Any]) -> None:
    text = _toml(doc)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # the writer above is rough; TOML errors are tested below
    _one_line_error(text)


@FUZZ
@given(st.text(max_size=300))
def test_recipe_text_never_escapes_as_another_exception(text: str) -> None:
    _one_line_error(text)


@FUZZ
@given(st.text(max_size=400))
def test_apt_source_parsers_never_raise(text: str) -> None:
    for parse in (apt_sources.parse_deb822, apt_sources.parse_one_line):
        for archive in parse(text):
            assert archive.uri and archive.suite
            assert "\n" not in archive.deb_src()


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Types", "URIs", "Suites", "Components", "Signed-By", "Enabled"]),
            st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=30),
        ),
        max_size=8,
    )
)
def test_deb822_stanzas(fields: list[tuple[str, str]]) -> None:
    text = "\n".join(f"{k}: {v}" for k, v in fields)
    for archive in apt_sources.parse_deb822(text):
        assert archive.uri and archive.suite and " " not in archive.uri
