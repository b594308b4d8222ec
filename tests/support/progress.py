"""A ``buildcache.Progress`` for tests: it keeps what it hears."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Heard:
    step: str
    done: int | None
    total: int | None
    detail: str


class Said:
    """The steps heard, in order (iterate it, or ask ``in``); ``heard`` keeps the counts."""

    def __init__(self) -> None:
        self.heard: list[Heard] = []

    def __call__(
        self, step: str, /, *, done: int | None = None, total: int | None = None, detail: str = ""
    ) -> None:
        self.heard.append(Heard(step, done, total, detail))

    def __iter__(self) -> Iterator[str]:
        return iter([h.step for h in self.heard])

    def __contains__(self, step: object) -> bool:
        return step in list(self)

    def clear(self) -> None:
        self.heard.clear()
