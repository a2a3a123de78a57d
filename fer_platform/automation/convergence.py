"""The entry points' repair: partitions whose layers disagree with the load log are re-materialised.

Every entry point (each landing sensor tick, ``demo``, the daily schedule) first puts back load-log
rows a lost checkpoint dropped (``restore_load_log``), then audits every layer as it is
(``core/convergence.py``) and asks for one ``ingest_images`` run per disagreeing partition with an
empty file list: it re-derives raw's manifest, bronze, the vectors and silver from the load log,
idempotently, and takes no new file. A partition a run is writing now is skipped: its layers may
differ until the run ends. A repair that failed ``max_attempts`` times is left to a person (the
reconcile job lists it), so a partition that cannot be repaired does not spin.
"""

from __future__ import annotations

import dagster as dg

from fer_platform.core import convergence
from fer_platform.core.convergence import Audit, Partition
from fer_platform.partitions import partition_key

REPAIR_TAG = "fer/repair"
UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]  # fmt: skip
FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
PARTITIONED_JOBS = ("ingest_images", "bulk_load", "reembed_images")


def partition_of_tag(value: str | None) -> Partition | None:
    if not value or "|" not in value:
        return None
    import datetime as dt

    emotion, day = value.split("|", 1)
    try:
        return emotion, dt.date.fromisoformat(day)
    except ValueError:
        return None


def busy_partitions(instance: dg.DagsterInstance) -> set[Partition]:
    """Partitions that an unfinished run writes (queued runs too: they will)."""
    out = set()
    for run in instance.get_runs(dg.RunsFilter(statuses=UNFINISHED)):
        if run.job_name in PARTITIONED_JOBS:
            part = partition_of_tag(run.tags.get("dagster/partition"))
            if part is not None:
                out.add(part)
    return out


def publish_busy(instance: dg.DagsterInstance) -> bool:
    return bool(instance.get_runs(dg.RunsFilter(statuses=UNFINISHED, job_name="publish_gold_and_index"), limit=1))


def repair_history(instance: dg.DagsterInstance, history: int = 1000) -> dict[str, tuple[int, int]]:
    """Per partition key (``angry|2026-11-30``): (repair runs ever asked for, repairs that failed since the
    last one that succeeded)."""
    out: dict[str, tuple[int, int]] = {}
    streak_open: dict[str, bool] = {}
    for run in instance.get_runs(dg.RunsFilter(tags={REPAIR_TAG: "true"}), limit=history):  # newest first
        key = run.tags.get("dagster/partition")
        if not key:
            continue
        total, failed = out.get(key, (0, 0))
        if streak_open.get(key, True):
            if run.status in FAILED:
                failed += 1
            elif run.status == dg.DagsterRunStatus.SUCCESS:
                streak_open[key] = False
        out[key] = (total + 1, failed)
    return out


def audit_layers(instance: dg.DagsterInstance | None, conn, lake, model: str) -> tuple[int, Audit]:
    """(load-log rows restored, the audit), skipping partitions a run is writing."""
    restored = convergence.restore_load_log(conn, lake)
    busy = busy_partitions(instance) if instance is not None else set()
    return restored, convergence.audit(conn, lake, model, skip=busy)


def repair_requests(instance: dg.DagsterInstance, audit: Audit, max_attempts: int, trigger: str) -> tuple[
    list[dg.RunRequest], list[str]
]:  # fmt: skip
    """One ingest run per disagreeing partition (a failed repair is asked for again, up to ``max_attempts``
    failures in a row), and one publish run when the index disagrees with silver
    and nothing will rebuild it otherwise; plus the partitions given up on."""
    history = repair_history(instance)
    requests, given_up = [], []
    for emotion, day in audit.partitions:
        key = partition_key(emotion, day)
        text = f"{emotion}|{day.isoformat()}"
        asked, failed = history.get(text, (0, 0))
        attempt = failed + 1
        if attempt > max_attempts:
            given_up.append(text)
            continue
        # a new key for each repair of the partition (a disagreement next week is repaired again, not dropped
        # as a repeated request); a partition with a repair queued or running is busy and never audited
        requests.append(dg.RunRequest(
            run_key=f"repair|{text}|{asked + 1}", job_name="ingest_images", partition_key=key,
            tags={REPAIR_TAG: "true", "fer/trigger": trigger, "fer/attempt": str(attempt)},
            run_config={"ops": {"raw_images": {"config": {"files": []}}}},
        ))  # fmt: skip
    # A repaired partition's silver update makes publish_automation rebuild the index; a deleted or
    # stale index with nothing to repair below it is rebuilt here.
    if audit.index_stale and not requests and not publish_busy(instance):
        requests.append(dg.RunRequest(
            run_key=f"repair-index|{audit.model}|{audit.silver.rows}|{audit.silver.digest}",
            job_name="publish_gold_and_index", tags={REPAIR_TAG: "true", "fer/trigger": trigger},
        ))  # fmt: skip
    return requests, given_up
