"""The entry points' repair: partitions whose layers disagree with the load log are re-materialised.

Every entry point (each landing sensor tick, ``demo``, the daily schedule) first puts back load-log
rows a lost checkpoint dropped (``restore_load_log``), then audits every layer as it is
(``core/convergence.py``) and asks for one ``ingest_images`` run per disagreeing partition with an
empty file list: it re-derives raw's manifest, bronze, the vectors and silver from the load log,
idempotently, and takes no new file. A partition a run is writing now is skipped: its layers may
differ until the run ends. A repair that failed ``max_attempts`` times in a row is left to a person (the
reconcile job lists it), so a partition that cannot be repaired does not spin.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

import dagster as dg

from fer_platform.assets.raw import ingest_run_config
from fer_platform.automation.runs import FAILED, UNFINISHED
from fer_platform.core import convergence
from fer_platform.core.convergence import Audit, Partition
from fer_platform.partitions import image_partitions, partition_key

log = logging.getLogger(__name__)

REPAIR_TAG = "fer/repair"
PUBLISH_JOB = "publish_gold_and_index"
# Repairs asked for per tick, oldest partitions first: a model switch that makes every partition disagree
# re-embeds them a few at a time, behind the new files of each tick, not in one flood of runs.
MAX_REPAIRS_PER_TICK = 7


def partition_of_tag(value: str | None) -> Partition | None:
    if not value or "|" not in value:
        return None
    emotion, day = value.split("|", 1)
    try:
        return emotion, dt.date.fromisoformat(day)
    except ValueError:
        return None


def busy_partitions(instance: dg.DagsterInstance) -> set[Partition]:
    """Partitions that an unfinished run of any job writes (queued runs too: they will), whether the sensor,
    a backfill, the automation or a click in the UI started it."""
    out = set()
    for run in instance.get_runs(dg.RunsFilter(statuses=UNFINISHED)):
        part = partition_of_tag(run.tags.get("dagster/partition"))
        if part is not None:
            out.add(part)
    return out


def publish_busy(instance: dg.DagsterInstance) -> bool:
    """Whether an unfinished run builds the search index (the publish job, or the automation's asset run)."""
    index = dg.AssetKey("search_index")
    return any(
        run.job_name == PUBLISH_JOB or (run.asset_selection and index in run.asset_selection)
        for run in instance.get_runs(dg.RunsFilter(statuses=UNFINISHED))
    )


@dataclass(frozen=True)
class RepairHistory:
    asked: int = 0  # repair runs ever asked for
    failed_in_a_row: int = 0  # since the last one that succeeded
    last_failure_end: float = 0.0  # unix time


def repair_history(
    instance: dg.DagsterInstance, tags: dict[str, str], job_name: str | None = None
) -> RepairHistory:
    """The repair runs with these tags (one partition's, or the index's), newest first."""
    records = instance.get_run_records(dg.RunsFilter(tags={REPAIR_TAG: "true", **tags}, job_name=job_name))
    failed, last_end, streak = 0, 0.0, True
    for record in records:
        if not streak:
            break
        if record.dagster_run.status in FAILED:
            failed += 1
            last_end = max(last_end, record.end_time or record.update_timestamp.timestamp())
        elif record.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
            streak = False
    return RepairHistory(len(records), failed, last_end)


def _due(history: RepairHistory, max_attempts: int, retry_after_s: float, now: float) -> str | None:
    """Why a repair is not asked for now (None: it is)."""
    if history.failed_in_a_row >= max_attempts:
        return "given up"
    if history.failed_in_a_row and now - history.last_failure_end < retry_after_s:
        return "waiting"
    return None


def audit_layers(instance: dg.DagsterInstance, conn, lake, model: str) -> Audit:
    """The audit of every layer, skipping partitions a run is writing. (The caller has put back what a lost
    checkpoint dropped first: ``restore_load_log``.)"""
    return convergence.audit(conn, lake, model, skip=busy_partitions(instance))


def repair_requests(
    instance: dg.DagsterInstance,
    audit: Audit,
    max_attempts: int,
    trigger: str,
    retry_after_s: float = 300.0,
    limit: int = MAX_REPAIRS_PER_TICK,
) -> tuple[list[dg.RunRequest], list[str]]:
    """One ingest run per disagreeing partition (at most ``limit``, oldest first), and one publish run when
    the index disagrees with silver and nothing rebuilds it; plus the partitions given up on. A failed repair
    is asked for again ``retry_after_s`` after it ended, until ``max_attempts`` failed in a row. Each repair
    gets a new run key (a disagreement next week is repaired again, not dropped as a repeated request); a
    partition with a run queued or running is busy and never audited, so it is not asked for twice."""
    now = time.time()
    requests, given_up = [], []
    for emotion, day in sorted(audit.partitions, key=lambda p: (p[1], p[0])):
        if len(requests) >= limit:
            break
        text = f"{emotion}|{day.isoformat()}"
        key = partition_key(emotion, day)
        if not image_partitions.has_partition_key(key):  # a stray lake folder: no such partition to run
            log.warning("layers of %s disagree, but it is not a partition of this code location", text)
            continue
        history = repair_history(instance, {"dagster/partition": text})
        why = _due(history, max_attempts, retry_after_s, now)
        if why == "given up":
            given_up.append(text)
        if why:
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"repair|{text}|{history.asked + 1}",
                job_name="ingest_images",
                partition_key=key,
                tags={
                    REPAIR_TAG: "true",
                    "fer/trigger": trigger,
                    "fer/attempt": str(history.failed_in_a_row + 1),
                },
                run_config=ingest_run_config(files=[]),  # no new file: re-derived from the load log
            )
        )
    # A repaired partition's silver update makes publish_automation rebuild the index; a deleted or
    # stale index with nothing to repair below it is rebuilt here.
    if audit.index_stale and not audit.partitions and not publish_busy(instance):
        history = repair_history(instance, {}, job_name=PUBLISH_JOB)
        why = _due(history, max_attempts, retry_after_s, now)
        if why == "given up":
            given_up.append("the search index")
        if not why:
            requests.append(
                dg.RunRequest(
                    run_key=f"repair-index|{history.asked + 1}",
                    job_name=PUBLISH_JOB,
                    tags={REPAIR_TAG: "true", "fer/trigger": trigger},
                )
            )
    return requests, given_up
