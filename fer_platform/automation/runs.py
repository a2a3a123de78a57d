"""What the instance's runs are doing: the files the landing sensor's runs carry, and workers that died.

Runs whose worker died (SIGKILL, an out-of-memory kill, a lost machine) end as failed, not STARTED.

Dagster's run monitoring (the daemon, ``run_monitoring`` in dagster.yaml) asks the run launcher
whether a run's worker is alive; the default launcher cannot tell. ``MonitoredRunLauncher`` is the
default launcher that can, for workers on this host: the worker's pid comes from the run's
``Started process for run (pid: N)`` event, or from the ``fer/worker`` tag of the runs that
``fer-platform demo`` executes in its own process. ``fail_dead_runs`` applies the same test without
a daemon (``demo`` calls it first), so a killed demo's run does not stay STARTED either.
"""

from __future__ import annotations

import socket

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

from fer_platform.core import liveness
from fer_platform.core.planner import Attempts

WORKER_TAG = "fer/worker"
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
_IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def worker_of(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[str, float | None] | None:
    """(worker name, time its run started) of a run, if known."""
    if run.tags.get(WORKER_TAG):
        return run.tags[WORKER_TAG], None
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None or not (entry.message or "").startswith("Started process for run"):
            continue
        pid = event.engine_event_data.metadata.get("pid") if event.engine_event_data else None
        if pid is not None:
            return f"{socket.gethostname()}:{pid.value}:", entry.timestamp
    return None


def worker_gone(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    found = worker_of(instance, run)
    return bool(found and liveness.gone(found[0], started_before=found[1]))


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark runs in progress whose worker process is gone as failed; their ids."""
    failed = []
    for run in instance.get_runs(dg.RunsFilter(statuses=_IN_PROGRESS)):
        if worker_gone(instance, run):
            instance.report_run_failed(
                run, "the run's worker process is gone (killed, or its machine restarted)"
            )
            failed.append(run.run_id)
    return failed


class MonitoredRunLauncher(DefaultRunLauncher):
    """Dagster's default run launcher, plus a worker health check for run monitoring."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if worker_gone(self._instance, run):
            return CheckRunHealthResult(WorkerStatus.FAILED, "the run's worker process is gone")
        return CheckRunHealthResult(WorkerStatus.RUNNING, "")


TRIGGER = {"fer/trigger": "landing_sensor"}


def files_of(run_config: dict) -> list[str]:
    """The landing keys a run of the sensor carries (its run config's file list)."""
    ops = (run_config or {}).get("ops", {})
    op = ops.get("raw_images") or ops.get("quarantine_unroutable") or {}
    return list(op.get("config", {}).get("files") or [])


def runs_state(
    instance: dg.DagsterInstance, history: int = 1000, unfinished_only: bool = False
) -> tuple[set[str], dict[str, Attempts]]:
    """(keys carried by the sensor's unfinished runs, failed attempts per key from its last failed runs)."""
    in_flight = {
        k
        for run in instance.get_runs(dg.RunsFilter(tags=TRIGGER, statuses=UNFINISHED))
        for k in files_of(run.run_config)
    }
    if unfinished_only:
        return in_flight, {}
    attempts: dict[str, Attempts] = {}
    for record in instance.get_run_records(dg.RunsFilter(tags=TRIGGER, statuses=FAILED), limit=history):
        end_us = int((record.end_time or record.update_timestamp.timestamp()) * 1_000_000)
        for k in files_of(record.dagster_run.run_config):
            a = attempts.get(k, Attempts())
            attempts[k] = Attempts(a.failed + 1, max(a.last_end_us, end_us))
    return in_flight, attempts
