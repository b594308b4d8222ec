"""deb-src lines from the host's apt sources (deb822 and one-line), never editing them."""

from __future__ import annotations

from pathlib import Path

from uniklab.bake.apt_sources import Archive, apt_options, host_archives, parse_deb822

# /etc/apt/sources.list.d/debian.sources of this Debian 12 machine, as found.
DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
KEY = "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_deb822_stanzas_become_one_archive_per_suite() -> None:
    assert parse_deb822(DEBIAN_SOURCES) == [
        Archive("http://deb.debian.org/debian", "bookworm", ("main",), KEY),
        Archive("http://deb.debian.org/debian", "bookworm-updates", ("main",), KEY),
        Archive("http://deb.debian.org/debian-security", "bookworm-security", ("main",), KEY),
    ]
    assert parse_deb822(DEBIAN_SOURCES)[0].deb_src() == (
        f"deb-src [signed-by={KEY}] http://deb.debian.org/debian bookworm main"
    )


def test_disabled_and_source_only_stanzas_are_skipped() -> None:
    text = "Types: deb-src\nURIs: http://a/\nSuites: x\nComponents: main\n\n"
    text += "Types: deb\nURIs: http://b/\nSuites: y\nComponents: main\nEnabled: no\n"
    assert parse_deb822(text) == []


def test_one_line_and_deb822_files_in_an_apt_tree(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n"
        "deb-src http://m/debian bookworm main\n"
        "deb http://m/debian bookworm main contrib  # trailing comment\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    (tmp_path / "sources.list.d" / "x.list.disabled-by-farm").write_text("deb http://no/ x main\n")
    found = host_archives(tmp_path)
    assert found[0] == Archive("http://m/debian", "bookworm", ("main", "contrib"), "/k.gpg")
    assert found[1] == Archive("http://m/debian", "bookworm", ("main", "contrib"), None)
    assert len(found) == 5 and all("no/" not in a.uri for a in found)


def test_apt_options_point_every_state_dir_at_the_private_one(tmp_path: Path) -> None:
    opts = apt_options(tmp_path / "apt", tmp_path / "apt" / "sources.list")
    pairs = dict(o.split("=", 1) for o in opts[1::2])
    assert set(opts[0::2]) == {"-o"}
    assert all(v.startswith(str(tmp_path)) for v in pairs.values())
    assert {"Dir::Etc::SourceList", "Dir::State::Lists", "Dir::Cache"} <= set(pairs)
