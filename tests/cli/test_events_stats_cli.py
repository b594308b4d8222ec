"""Bad input to `uniklab events` and `uniklab stats`: one error line, a non-zero exit,
nothing created; and the events table's lines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from uniklab.cli.events import line
from uniklab.cli.main import main
from uniklab.events import Event

BAD = [
    (["events", "--since", "yesterday"], "invalid --since 'yesterday'"),
    (["events", "--since", ""], "invalid --since"),
    (["events", "--since", "10y"], "invalid --since"),
    (["events", "--since", "9" * 5000 + "d"], "invalid --since"),
    (["events", "--until", "soon"], "invalid --until 'soon'"),
    (["events", "--filter", "state=running"], "use event=EVENT or name=NAME"),
    (["events", "--filter", "event"], "use event=EVENT or name=NAME"),
    (["events", "--filter", "name="], "use event=EVENT or name=NAME"),
    (["events", "--filter", "event=exploded"], "an event is one of created, ready"),
    (["events", "--bogus"], "No such option"),
    (["stats", "--no-stream", "ghost"], "no such instance: ghost"),
    (["stats", "--no-stream", "a;b"], "no such instance"),
]


@pytest.mark.parametrize("argv,expect", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input_is_one_line(
    argv: list[str], expect: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expect in lines[0]
    assert not (home / "events.jsonl").exists()


def test_event_line() -> None:
    when = datetime(2026, 11, 30, 5, 6, 7, 890000, tzinfo=UTC)
    e = Event(when, "crashed", "r1", {"reason": "app exited status 3"})
    assert line(e) == "2026-11-30T05:06:07.890Z  crashed    r1  reason=app exited status 3"
    assert line(Event(when, "ready", "r1")) == "2026-11-30T05:06:07.890Z  ready      r1"


def test_no_follow_on_an_empty_home(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--no-follow", "--json"]) == 0
    assert capsys.readouterr().out == ""
