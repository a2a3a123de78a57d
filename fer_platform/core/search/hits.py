"""One answer row of a similarity search, the same whichever backend (FAISS index or pgvector) found it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Hit:
    rank: int
    image_id: str
    filepath: str
    emotion: str
    split: str | None
    load_date: str | None
    distance: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def iso(value) -> str | None:
    """A load date as ISO text (dates come back as dates from Parquet and PostgreSQL, as text from JSON)."""
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
