from __future__ import annotations

import re
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


# -- the recipe format of issue #6 ------------------------------------------------------

BASE = 'name = "x"\nbinary = "/bin/true"\n'


def _load(tmp_path: Path, text: str) -> recipe.Recipe:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return recipe.load(str(path))[0]


@pytest.mark.parametrize(
    "text,needle",
    [
        (BASE + "bogus = 1\n", "bogus: unknown key"),
        (BASE + '[probe]\nkind = "http"\nport = 80\nbogus = 1\n', "probe.bogus: unknown key"),
        ('name = "x"\nbinary = "bin/true"\n', "binary must be an absolute"),
        (BASE + "ports = [0]\n", "invalid port 0"),
        (BASE + "ports = [80, 80]\n", "port 80 listed twice"),
        (BASE + 'ports = [80]\n[probe]\nkind = "tcp"\nport = 81\n', "probe port 81 is not"),
        (BASE + '[probe]\nkind = "http"\n', "probe http needs a port"),
        (BASE + 'ports = [80]\n[probe]\nkind = "http"\npath = "x"\n', "probe.path"),
        (BASE + 'ports = [80]\n[probe]\nkind = "http"\nstatus = 42\n', "probe.status"),
        (BASE + '[probe]\nkind = "console"\nmarker = "("\n', "probe.marker"),
        (BASE + 'memory = "64M"\nmin_memory = "96M"\n', "min_memory 96M is more than"),
        (BASE + 'min_memory = "tiny"\n', "min_memory"),
        (BASE + '[[files]]\ndest = "/etc/a"\n', "exactly one of src or content"),
        (BASE + '[[files]]\ndest = "/etc/a"\nsrc = "a"\ncontent = "b"\n', "exactly one"),
        (BASE + '[[files]]\ndest = "/etc/a"\nsrc = "../secret"\n', "escapes the recipe"),
        (BASE + '[[files]]\ndest = "/etc/a"\nsrc = "/etc/shadow"\n', "only allowed in built-in"),
        (BASE + '[[files]]\ndest = "etc/a"\ncontent = ""\n', "must be an absolute path"),
        (BASE + '[[files]]\ndest = "/tmp/a"\ncontent = ""\n', "guest mounts /tmp over it"),
        (BASE + '[[files]]\ndest = "/etc/passwd"\ncontent = ""\n', "written by the baker"),
        (BASE + '[[files]]\ndest = "/init"\ncontent = ""\n', "written by the baker"),
        (BASE + '[[files]]\ndest = "/a"\ncontent = ""\nmode = 99999\n', "not a permission"),
        (
            BASE + '[[files]]\ndest = "/a"\ncontent = ""\n[[files]]\ndest = "/a"\ncontent = ""\n',
            "/a is written twice",
        ),
        (
            BASE + 'docroot = "/www"\npage = "hi"\n[[files]]\ndest = "/www/index.html"\n'
            'content = ""\n',
            "written twice",
        ),
        (BASE + 'page = "hi"\n', "page needs a docroot"),
        (BASE + 'docroot = "/run/www"\n', "docroot /run/www is hidden"),
        (BASE + 'dirs = ["/proc/x"]\n', "hidden at boot"),
        (BASE + 'dirs = ["relative"]\n', "dirs.0.path"),
        (BASE + 'libs = ["lib/../x.so"]\n', "libs"),
        (BASE + 'libs = ["sub/libx.so"]\n', "soname"),
        (BASE + 'env = {"1BAD" = "x"}\n', "environment variable name"),
        (BASE + 'package = "Not A Package"\n', "Debian package name"),
        (BASE + '[[users]]\nname = "root"\nuid = 5\n', "declared twice (or is root)"),
        (BASE + '[[users]]\nname = "a"\nuid = 0\n', "0 is root"),
        (BASE + '[[users]]\nname = "Bad!"\nuid = 5\n', "invalid user name"),
        (BASE + '[[users]]\nname = "a"\nuid = 5\n[[users]]\nname = "b"\nuid = 5\n', "share a uid"),
        (BASE + '[[groups]]\nname = "g"\ngid = 7\nmembers = ["nobody"]\n', "not a declared user"),
        (BASE + 'install_as = "/dev/x"\n', "install_as /dev/x is hidden"),
    ],
)
def test_recipe_validation(text: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(BakeError, match=re.escape(needle)) as err:
        _load(tmp_path, text)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "r.toml") + ": ")


def test_full_recipe_parses(tmp_path: Path) -> None:
    r = _load(
        tmp_path,
        BASE + 'package = "coreutils"\nargs = ["-x"]\nenv = {A = "1"}\nports = [80, 81]\n'
        'min_memory = "64M"\nlibs = ["libnss_files.so.2", "/usr/lib/x.so"]\n'
        'dirs = ["/var/lib/x", {path = "/var/spool", mode = 0o1777}]\n'
        'docroot = "/srv/www"\npage = "<h1>hi</h1>"\n'
        '[probe]\nkind = "http"\nport = 81\npath = "/health"\nstatus = 204\n'
        '[[files]]\ndest = "/etc/x.conf"\nsrc = "x.conf"\nmode = 0o600\n'
        '[[users]]\nname = "www-data"\nuid = 33\n'
        '[[users]]\nname = "app"\nuid = 1000\ngid = 50\n'
        '[[groups]]\nname = "staff"\ngid = 50\nmembers = ["app"]\n',
    )
    assert r.probe_port == 81 and r.probe.path == "/health" and r.probe.status == 204
    assert [(d.path, d.mode) for d in r.dirs] == [("/var/lib/x", 0o755), ("/var/spool", 0o1777)]
    assert r.passwd().splitlines() == [
        "root:x:0:0:root:/:/bin/false",
        "www-data:x:33:33:www-data:/nonexistent:/bin/false",
        "app:x:1000:50:app:/nonexistent:/bin/false",
    ]
    assert r.group().splitlines() == ["root:x:0:", "staff:x:50:app", "www-data:x:33:"]


def test_builtin_recipes_may_copy_host_files() -> None:
    r = recipe.parse(
        BASE + '[[files]]\ndest = "/etc/m"\nsrc = "/etc/hostname"\n', "b", builtin=True
    )
    assert r.files[0].src == "/etc/hostname"


def test_redis_recipe_is_unchanged() -> None:
    r, _ = recipe.load("redis")
    assert r.users == [] and r.dirs == [] and r.page is None and r.min_memory is None
    assert r.passwd() == "root:x:0:0:root:/:/bin/false\n" and r.group() == "root:x:0:\n"


@pytest.mark.parametrize("name", ["apache", "nginx", "memcached"])
def test_app_recipes(name: str) -> None:
    r, where = recipe.load(name)
    assert where is None and r.package and r.min_memory and r.ports
    assert r.probe_port in r.ports
    if name != "memcached":
        assert r.probe.kind == "http" and r.docroot and r.page and name in r.page.lower()
        assert "www-data" in r.passwd()
    else:
        assert r.probe.kind == "memcached" and "-u" in r.args


def test_apache_modules_are_resolved() -> None:
    r, _ = recipe.load("apache")
    conf = next(f.content for f in r.files if f.dest == "/etc/apache2/apache2.conf")
    assert conf is not None
    loaded = re.findall(r"^LoadModule \S+ (\S+)$", conf, re.MULTILINE)
    assert loaded and sorted(loaded) == sorted(r.libs)  # every dlopen'd module is baked
    assert "mpm_event" in conf and "/proc/self/fd/2" in conf


def test_from_binary(tmp_path: Path) -> None:
    exe = tmp_path / "My_D"
    exe.write_bytes(b"\x7fELF")
    r = recipe.from_binary(str(exe), port=9000, name="myd")
    assert r.name == "myd" and r.ports == [9000]
    assert r.probe.kind == "tcp" and r.probe_port == 9000
    assert r.image_binary_path == "/bin/My_D"
    assert recipe.from_binary(str(exe)).name == "my_d"
    assert recipe.from_binary(str(exe)).probe.kind == "console"
    with pytest.raises(UsageError, match="invalid port 70000"):
        recipe.from_binary(str(exe), port=70000)
    with pytest.raises(NotFoundError):
        recipe.from_binary(str(tmp_path / "nope"), port=1)


def test_files_from_recipe_dir_and_escape(tmp_path: Path) -> None:
    from uniklab.bake import baker
    from uniklab.bake.kernel_choice import KernelChoice

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "ok.conf").write_text("ok")
    (tmp_path / "secret").write_text("no")
    (tmp_path / "app" / "link").symlink_to(tmp_path / "secret")
    r = _load(tmp_path, BASE)
    kernel = KernelChoice("host", Path("/"), "", "host")
    inp = baker._Inputs(r, tmp_path / "app", Path("/bin/true"), kernel, {}, [], Path("/"), "gzip")
    assert inp.resolve_src("ok.conf") == (tmp_path / "app" / "ok.conf").resolve()
    with pytest.raises(BakeError, match="escapes the recipe's directory"):
        inp.resolve_src("link")  # a symlink that leads out is an escape too
    with pytest.raises(BakeError, match="not found"):
        inp.resolve_src("missing.conf")
    with pytest.raises(BakeError, match="only in built-in"):
        inp.resolve_src("/etc/hostname")


def test_missing_binary_names_the_package(tmp_path: Path) -> None:
    from uniklab.bake import baker

    r = _load(tmp_path, 'name = "x"\nbinary = "/nonexistent/bin/x"\npackage = "xpkg"\n')
    with pytest.raises(
        BakeError, match=r"binary /nonexistent/bin/x not found .*apt-get install xpkg"
    ):
        baker._resolve(r, None, tmp_path, "gzip")


BUILD = '[build]\ndebian_source = "redis"\ncommand = ["make"]\noutput = "src/redis-server"\n'


def test_builtin_static_redis_is_built_from_source() -> None:
    r, _ = recipe.load("redis-static")
    assert r.binary is None and r.build is not None
    assert r.build.debian_source == "redis" and r.build.compiler == "musl-gcc"
    assert r.image_binary_path == "/bin/redis-server" and r.installed()


@pytest.mark.parametrize(
    "text,needle",
    [
        ('name = "x"\nbinary = "/bin/true"\n' + BUILD, "exactly one of binary"),
        ('name = "x"\n' + BUILD.replace('"redis"', '"Redis;rm"'), "source package"),
        ('name = "x"\n' + BUILD.replace('["make"]', "[]"), "non-empty argv"),
        ('name = "x"\n' + BUILD.replace('["make"]', '[""]'), "non-empty argv"),
        ('name = "x"\n' + BUILD.replace('"src/redis-server"', '"../x"'), "inside the source"),
        ('name = "x"\n' + BUILD.replace('"src/redis-server"', '"/usr/bin/x"'), "inside the"),
        ('name = "x"\n' + BUILD.replace('"src/redis-server"', '""'), "inside the source"),
        ('name = "x"\n' + BUILD + 'compiler = "gcc; id"\n', "compiler"),
        ('name = "x"\n' + BUILD + "jobs = 3\n", "unknown key"),
    ],
)
def test_bad_build_sections(text: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(BakeError, match=re.escape(needle)):
        recipe.load(str(path))


@pytest.mark.parametrize(
    ("rumprun", "words"),
    [
        ({"binary": "b"}, "exactly one of package"),
        ({"package": "redis", "debian_source": "redis", "binary": "b"}, "exactly one of"),
        ({"debian_source": "redis", "binary": "b"}, "needs a command"),
        ({"package": "redis", "binary": "b", "shims": ["x.c"]}, "go with debian_source"),
        ({"debian_source": "redis", "command": ["make"], "binary": "../b"}, "inside the package"),
    ],
)
def test_a_rumprun_build_has_one_source(rumprun: dict[str, object], words: str) -> None:
    from uniklab.bake.recipe import Recipe

    with pytest.raises(ValueError, match=words):
        Recipe.model_validate({"name": "x", "kind": "rumprun", "rumprun": rumprun})
