from __future__ import annotations

from pathlib import Path

import pytest

from uniklab.bake import recipe
from uniklab.errors import BakeError, NotFoundError, UsageError


def test_builtin_redis() -> None:
    r, where = recipe.load("redis")
    assert where is None
    assert r.image_binary_path == "/bin/redis-server"
    assert r.ports == [6379] and r.probe.kind == "redis" and r.probe_port == 6379


def test_catalog_all_valid() -> None:
    for name in recipe.builtin_names():
        assert recipe.load(name)[0].name == name


@pytest.mark.parametrize(
    "text,needle",
    [
        ('name = "x"\nbinary = "/bin/true"\nbogus = 1\n', "bogus"),
        ('name = "x"\n', "binary"),
        ('name = "X Y"\nbinary = "/bin/true"\n', "name"),
        ('name = "x"\nbinary = "/bin/true"\nports = [70000]\n', "ports"),
        ('name = "x"\nbinary = "/bin/true"\n[probe]\nkind = "smtp"\n', "probe"),
        ('name = "x"\nbinary = "/bin/true"\nmemory = "lots"\n', "memory"),
        ('name = "x"\nbinary = "/bin/true"\n[[files]]\ndest = "../etc"\n', "files"),
        ("name = \n", "TOML"),
    ],
)
def test_bad_recipes(text: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(BakeError, match=needle):
        recipe.load(str(path))


def test_unknown_recipe() -> None:
    with pytest.raises(NotFoundError):
        recipe.load("nosuchapp")
    with pytest.raises(NotFoundError):
        recipe.load("/nonexistent/x.toml")
    with pytest.raises(UsageError):
        recipe.load("bad name!")
