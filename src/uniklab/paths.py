"""Where uniklab keeps its data: the image store, the state database, runtime directories.

``UNIKLAB_HOME`` overrides everything (tests point it at a temporary directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from uniklab.errors import UsageError


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def db(self) -> Path:
        return self.home / "state.db"

    @property
    def events(self) -> Path:
        """The home's event stream (see ``uniklab.events``)."""
        return self.home / "events.jsonl"

    def ensure(self) -> Paths:
        try:
            for d in (self.home, self.images, self.cache, self.run):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot use {self.home} as UNIKLAB_HOME: {exc.strerror}") from exc
        return self


def default_paths() -> Paths:
    env = os.environ.get("UNIKLAB_HOME")
    home = Path(env) if env else Path(platformdirs.user_data_dir("uniklab"))
    return Paths(home.expanduser().resolve())
