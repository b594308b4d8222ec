"""`common.table`: into a pipe it writes, without rich, the lines rich's Table writes (rich
is the oracle here); terminals, and cells rich measures differently, still go through rich;
a cell is text either way, never markup."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from uniklab.cli import common

COLUMNS = ["Name", "ID", "Mem", "State", "Time(s)", "Ports"]
ROWS: list[list[list[object]]] = [
    [],
    [["r1", 1, 64, "running", "", "127.0.0.1:40001->6379"]],
    [
        ["redis-a", 1, 64, "running", "12.5", ""],
        ["a-much-longer-name", 1234, None, "crashed (app exited status 1)", "", "x"],
        ["w", 7, 48, "exited (app returned 0)", "0.0", "127.0.0.1:1->2,127.0.0.1:3->4"],
    ],
]


def _rich(columns: list[str], rows: list[list[object]], console: Console) -> None:
    """The table as rich renders it (what common.table did before it wrote pipes itself)."""
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=True)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    console.print(t)


@pytest.fixture(autouse=True)
def _no_console_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts before common.out is made; no environment forcing terminal styles."""
    monkeypatch.delitem(vars(common), "out", raising=False)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("rows", ROWS, ids=["empty", "one", "several"])
def test_a_pipe_gets_richs_lines_without_rich(
    rows: list[list[object]], capsys: pytest.CaptureFixture[str]
) -> None:
    oracle = io.StringIO()
    _rich(COLUMNS, rows, Console(file=oracle, highlight=False, soft_wrap=True, width=400))
    capsys.readouterr()
    common.table(COLUMNS, rows)
    assert capsys.readouterr().out == oracle.getvalue()
    assert "out" not in vars(common)  # no rich console was made


def test_cells_are_text_not_markup(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[list[object]] = [["[bold]x[/bold]", ":smile:", "[red]", "", "", ""]]
    common.table(COLUMNS, rows)
    plain = capsys.readouterr().out
    assert "[bold]x[/bold]" in plain and ":smile:" in plain
    # The same through rich (a terminal's path): still literal.
    file = io.StringIO()
    console = Console(file=file, highlight=False, soft_wrap=True, width=400)
    monkeypatch.setattr(common, "out", console, raising=False)
    common.table(COLUMNS, rows)
    assert file.getvalue() == plain


def test_a_terminal_gets_richs_table_with_a_bold_header(monkeypatch: pytest.MonkeyPatch) -> None:
    file = io.StringIO()
    console = Console(file=file, force_terminal=True, color_system="standard", width=120)
    monkeypatch.setattr(common, "out", console, raising=False)
    common.table(COLUMNS, ROWS[2])
    out = file.getvalue()
    assert "\x1b[1mName" in out
    assert out.splitlines()[2].startswith("a-much-longer-name  1234")


def test_wide_characters_go_through_rich(capsys: pytest.CaptureFixture[str]) -> None:
    """A cell whose width is not its length (here two columns per character) is measured
    by rich, which keeps the columns aligned."""
    rows: list[list[object]] = [["名前", 1, 2, "", "", ""], ["ab", 1, 2, "", "", ""]]
    common.table(COLUMNS, rows)
    oracle = io.StringIO()
    _rich(COLUMNS, rows, Console(file=oracle, highlight=False, soft_wrap=True, width=400))
    assert capsys.readouterr().out == oracle.getvalue()
