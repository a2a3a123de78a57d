"""The one home folder that holds all local state (``--home``, ``FER_HOME``, default ``./.fer``).

<home>/lake/       raw/ bronze/ silver/ gold/ index/ quarantine/ _meta/
<home>/postgres/   the embedded PostgreSQL data directory
<home>/dagster/    DAGSTER_HOME (dagster.yaml: instance storage on that PostgreSQL)
<home>/landing/    the sample landing zone the demo writes when none is given
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fer_platform.core.layout import LAKE_FOLDERS

DEFAULT_HOME = ".fer"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Home":
        value = home or os.environ.get("FER_HOME") or DEFAULT_HOME
        return cls(Path(value).expanduser().resolve())

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    def create(self) -> "Home":
        for sub in LAKE_FOLDERS:
            (self.lake / sub).mkdir(parents=True, exist_ok=True)
        self.landing.mkdir(parents=True, exist_ok=True)
        self.dagster.mkdir(parents=True, exist_ok=True)
        return self
