"""Reconciliation of the landing zone, the load log and the lake (the auto-loader's periodic backfill,
made visible): landing files that were never loaded, loaded files missing from the lake, partitions
whose layers disagree with the load log (core/convergence.py), and temporary files that killed writes
left in the lake (removed here when their writer is gone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fer_platform.core import convergence, ledger
from fer_platform.core.layout import RAW_IMAGES, route
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import LOAD_LOG_TABLE
from fer_platform.core.storage import Storage, remove_stale_temps, temp_is_stale, temp_target


@dataclass
class Reconciliation:
    landing_files: int = 0
    ledger_versions: int = 0
    loaded_in_ledger: int = 0
    never_loaded: list[str] = field(default_factory=list)  # landing keys whose current version is not logged
    missing_in_lake: list[str] = field(default_factory=list)  # lake paths of loaded rows that are gone
    recent: int = 0  # modified within the settle window: not judged yet
    in_flight: int = 0  # carried by a run that has not finished (queued or running): not judged yet
    disagreements: list[str] = field(default_factory=list)  # one line per layer that disagrees
    temp_files_removed: list[str] = field(default_factory=list)  # of killed writes, removed now
    temp_files_in_use: list[str] = field(default_factory=list)  # of writes in progress

    @property
    def ok(self) -> bool:
        return not self.never_loaded and not self.missing_in_lake and not self.disagreements


def reconcile(
    landing: Storage,
    lake: Storage,
    dsn: str,
    settle_before_us: int,
    in_flight: set[str] | frozenset[str] = frozenset(),
    model: str | None = None,
    busy: set = frozenset(),
) -> Reconciliation:
    """Compare a full listing of the landing zone with the load log, the load log with the lake, and
    (with ``model``) every layer with the load log.

    Files modified after ``settle_before_us`` may still be on their way, and files that an unfinished
    run carries (``in_flight``: queued, loading, or waiting for the triage run that quarantines them)
    will be logged by it: neither is judged. ``busy`` partitions are being written and not audited.
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
        if (landing.uri(e.key), e.size, e.modified_us) in known:
            continue
        if e.modified_us > settle_before_us:
            out.recent += 1
        elif e.key in in_flight:
            out.in_flight += 1
        else:
            out.never_loaded.append(e.key)
    in_lake = {e.key for e in lake.list_files(RAW_IMAGES)}
    out.missing_in_lake = sorted(p for p in loaded_paths if p not in in_lake)
    if model is not None:
        with connect(dsn) as conn:
            out.disagreements = convergence.audit(conn, lake, model, skip=busy).lines()
    if lake.local:
        for e in lake.list_files():
            name = e.key.rsplit("/", 1)[-1]
            target = temp_target(name)
            if target is None:
                continue
            full = lake.path(e.key)
            if temp_is_stale(full):
                out.temp_files_removed += [
                    lake.key_of(p) for p in remove_stale_temps(os.path.dirname(full), {target})
                ]
            else:
                out.temp_files_in_use.append(e.key)
    return out
