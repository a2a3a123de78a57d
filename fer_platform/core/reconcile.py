"""Reconciliation of the landing zone, the load log and the lake (the auto-loader's periodic backfill,
made visible): landing files that were never loaded, and loaded files missing from the lake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fer_platform.core import ledger
from fer_platform.core.db import LOAD_LOG_TABLE, connect
from fer_platform.core.layout import RAW_IMAGES, route
from fer_platform.core.storage import Storage


@dataclass
class Reconciliation:
    landing_files: int = 0
    ledger_versions: int = 0
    loaded_in_ledger: int = 0
    never_loaded: list[str] = field(default_factory=list)  # landing keys whose current version is not logged
    missing_in_lake: list[str] = field(default_factory=list)  # lake paths of loaded rows that are gone
    recent: int = 0  # modified within the settle window: not judged yet

    @property
    def ok(self) -> bool:
        return not self.never_loaded and not self.missing_in_lake


def reconcile(landing: Storage, lake: Storage, dsn: str, settle_before_us: int) -> Reconciliation:
    """Compare a full listing of the landing zone with the load log, and the load log with the lake.

    Files modified after ``settle_before_us`` may still be on their way and are not judged.
    """
    out = Reconciliation()
    listing = [e for e in landing.list_files() if not route(e.key).ignored]
    out.landing_files = len(listing)
    with connect(dsn) as conn:
        known = ledger.versions_under(conn, landing.uri())
        loaded_paths = [
            r[0]
            for r in conn.execute(
                f"SELECT lake_path FROM {LOAD_LOG_TABLE} WHERE status = 'loaded' AND lake_path IS NOT NULL"
            ).fetchall()
        ]
    out.ledger_versions = len(known)
    out.loaded_in_ledger = len(loaded_paths)
    for e in listing:
        if e.modified_us > settle_before_us:
            out.recent += 1
        elif (landing.uri(e.key), e.size, e.modified_us) not in known:
            out.never_loaded.append(e.key)
    in_lake = {e.key for e in lake.list_files(RAW_IMAGES)}
    out.missing_in_lake = sorted(p for p in loaded_paths if p not in in_lake)
    return out
