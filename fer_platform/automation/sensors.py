"""The landing sensor (auto-loader semantics) and the declarative automation of gold and the index.

landing_sensor, each tick: list the landing zone, take the settled files beyond the cursor's
watermark that the load log does not hold (oldest first, at most max_files_per_tick), and
request one ingest run per emotion for today's partition carrying exactly those files. The
load log is the checkpoint: a lost cursor reloads nothing. The sensor's memory (core/planner.py
LandingMemory) makes an idle tick ask the load log about no file. Logic in core/planner.py.
"""

import hashlib
import time
import warnings

import dagster as dg

from fer_platform.assets.raw import ingest_run_config, landing_zone
from fer_platform.automation.convergence import audit_layers, busy_partitions, repair_requests
from fer_platform.automation.jobs import (
    PUBLISH_ASSETS,
    expand_csv_job,
    expand_run_config,
    ingest_job,
    landing_triage,
    publish_job,
    triage_run_config,
)
from fer_platform.automation.runs import FAILED, TRIGGER, runs_state
from fer_platform.core import backlog, challenge, ledger
from fer_platform.core.convergence import audit_due, audited, layer_marks, restore_load_log
from fer_platform.core.listing import list_landing
from fer_platform.core.pg.connect import connect
from fer_platform.core.planner import LandingMemory, Watermark, plan_landing, run_key
from fer_platform.partitions import partition_key, utc_today
from fer_platform.resources import (
    AutoLoaderResource,
    EmbedderResource,
    LakeResource,
    LandingResource,
    PostgresResource,
)
from fer_platform.resources.environments import automation_interval, automation_on_by_default, sensor_interval

# AutomationConditionSensorDefinition passes Dagster's own beta `owners` parameter through.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*owners.*")

CSV_VERSION_TAG = (
    "fer/csv_version"  # an expand_challenge_csv run's CSV version (a digest of uri, size, mtime)
)


def default_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automation_on_by_default() else dg.DefaultSensorStatus.STOPPED


@dg.sensor(
    name="landing_sensor",
    jobs=[ingest_job, landing_triage, publish_job, expand_csv_job],
    minimum_interval_seconds=sensor_interval(),
    default_status=default_status(),
    description="Picks up landing files exactly once (auto-loader semantics): one ingest run per emotion for "
    "today's partition with the exact file list; the load log is the checkpoint, the cursor a watermark; "
    "files of failed runs are asked for again (retry_after_seconds apart, max_attempts times). Each tick "
    "also puts back load-log rows a lost checkpoint dropped, and re-materialises partitions whose layers "
    "disagree with the load log (a crash, an outage, a deleted layer), and the index when it does not hold "
    "exactly silver. A challenge CSV (fer2013.csv) gets an expand_challenge_csv run per new version.",
)
def landing_sensor(
    context: dg.SensorEvaluationContext,
    landing: LandingResource,
    postgres: PostgresResource,
    auto_loader: AutoLoaderResource,
    lake: LakeResource,
    embedder: EmbedderResource,
) -> dg.SensorResult:
    storage, settings = landing.storage(), auto_loader.settings()
    dsn = postgres.get_dsn()
    # The audit (and putting back a lost checkpoint) reads every partition: only when a layer changed since
    # the last audit in agreement, or FULL_AUDIT_SECONDS after it (core/convergence.py layer_marks).
    gate, marks, audit_now = None, None, True
    try:  # an unreadable model or a lake hiccup: the audit below says what is wrong, the files still load
        gate = (dsn, lake.storage().uri(), embedder.model_id())
        with connect(dsn) as conn:
            marks = (layer_marks(conn, lake.storage(), gate[2]), frozenset(busy_partitions(context.instance)))
        audit_now = audit_due(gate, marks)
    except Exception:  # noqa: BLE001
        marks = None
    restored = 0
    with connect(dsn) as conn:
        # deleting load-log rows forgets the landing memory (a trigger, in the same transaction): then the
        # lost checkpoint is put back before this tick plans, whatever the marks say (they may lag)
        forgotten = ledger.seen_token(conn, storage.uri()) is None
        if audit_now or forgotten:  # a lost checkpoint first: the files it had are not new
            restored = restore_load_log(conn, lake.storage())
    if restored:
        context.log.warning(
            f"put back {restored} load-log row(s) that the raw manifests hold (a lost checkpoint)"
        )
    cursor = Watermark.from_json(context.cursor)
    if context.cursor and not cursor.started:
        context.log.warning("the cursor could not be read: starting from the load log")

    oldest = None
    if not cursor.started and not settings.include_existing_files:
        with connect(dsn) as conn:
            oldest = ledger.oldest_version_us(conn, storage.uri())
    in_flight, attempts = runs_state(context.instance)
    # local folders: only the folders that changed are read again (core/listing.py)
    listing, listed = list_landing(storage, settings.settle_seconds)
    memory = LandingMemory(dsn, storage)  # asks the load log only about versions it has not seen logged
    known = backlog.Recorder()  # keeps the load log's answer: the backlog asks nothing more
    now_us = time.time_ns() // 1000
    tick = plan_landing(  # an idle tick again when nothing it read changed (core/planner.py)
        storage,
        listing,
        listed.generation if storage.local else None,
        memory,
        cursor,
        settings,
        now_us=now_us,
        in_flight=in_flight,
        attempts=attempts,
        oldest_logged_us=oldest,
        wrap_known=known.around,
    )
    today = utc_today()
    requests = []
    for emotion, files, attempt in tick.batches:
        keys = [e.key for e in files]
        tags = {**TRIGGER, "fer/files": str(len(keys)), "fer/attempt": str(attempt)}
        if emotion is None:
            requests.append(
                dg.RunRequest(
                    run_key=run_key(files, attempt),
                    job_name=landing_triage.name,
                    tags=tags,
                    run_config=triage_run_config(keys, settings.on_success),
                )
            )
        else:
            requests.append(
                dg.RunRequest(
                    run_key=run_key(files, attempt),
                    job_name=ingest_job.name,
                    partition_key=partition_key(emotion, today),
                    tags=tags,
                    run_config=ingest_run_config(keys, settings.on_success),
                )
            )
    requests += _csv_expansions(context, storage, dsn, listing, settings)
    if audit_now:
        loading = {r.partition_key for r in requests}
        requests += _repairs(context, dsn, lake, embedder, settings, loading, gate, marks, restored)
    if tick.given_up:
        context.log.warning(
            f"{len(tick.given_up)} file(s) failed in {settings.max_attempts} runs and are left to a "
            f"person (see those runs), e.g. {tick.given_up[0]}"
        )
    state = (
        f"{tick.deferred} still being written, {tick.in_flight} in runs not finished, {tick.waiting_retry} "
        f"waiting to be retried, {tick.already_logged} already in the load log"
    )
    if requests:
        context.log.info(
            f"{tick.files} file(s) ({tick.retried} asked for again) in {len(requests)} run(s); "
            f"{tick.capped} left for the next tick (max_files_per_tick {settings.max_files_per_tick}); "
            f"{state}"
        )
    waiting = backlog.measure(storage.uri(), listing, known, now_us, settings.settle_seconds, tick)
    return dg.SensorResult(
        run_requests=requests,
        cursor=tick.cursor.to_json(),
        skip_reason=None if requests else f"no new files ({state})",
        # a reused idle plan: nothing the tick read changed since the tick that observed (or chose not to)
        asset_events=[] if tick.reused else _landing_observation(context, storage.uri(), waiting),
    )


def _landing_observation(context, uri: str, waiting: backlog.Backlog) -> list[dg.AssetObservation]:
    """The landing zone's backlog as an observation of the landing_zone asset: when files wait, or when the
    figures differ from the last observation's (an idle landing zone adds no event per tick)."""
    if not waiting.files_waiting:
        latest = context.instance.fetch_observations(landing_zone.key, limit=1).records
        meta = latest[0].asset_observation.metadata if latest and latest[0].asset_observation else {}
        last = tuple(
            meta[k].value if k in meta else None for k in ("files_waiting", "bytes_waiting", "files_total")
        )
        if last == waiting.figures():
            return []
    return [
        dg.AssetObservation(
            asset_key=landing_zone.key,
            description=f"{waiting.files_waiting} file(s) waiting in {uri}",
            metadata={**waiting.metadata(), "landing": dg.MetadataValue.path(uri)},
        )
    ]


def _csv_expansions(context, storage, dsn, listing, settings) -> list[dg.RunRequest]:
    """One expand_challenge_csv run per settled landing CSV version not expanded yet; the staged images it
    writes load on later ticks like any landing file. The run key is the version and its failed attempts:
    asked for again while it runs, it is one run; after a failed run it is asked for again
    (retry_after_seconds later, at most max_attempts runs), like the files of a failed ingest run."""
    now_us = time.time_ns() // 1000
    settled_before = now_us - int(settings.settle_seconds * 1e6)
    requests = []
    for e in challenge.unexpanded(storage, dsn, listing):
        if e.modified_us > settled_before:
            continue
        version = hashlib.sha256(f"{storage.uri(e.key)}|{e.size}|{e.modified_us}".encode()).hexdigest()[:16]
        failed = context.instance.get_run_records(
            dg.RunsFilter(tags={CSV_VERSION_TAG: version}, statuses=FAILED)
        )
        if len(failed) >= settings.max_attempts:
            context.log.warning(
                f"{e.key}: its expansion failed in {len(failed)} runs, left to a person (see those runs)"
            )
            continue
        ends = [r.end_time or r.update_timestamp.timestamp() for r in failed]
        if ends and now_us - int(max(ends) * 1e6) < settings.retry_after_seconds * 1e6:
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"csv:{version}:{len(failed)}",
                job_name=expand_csv_job.name,
                tags={**TRIGGER, CSV_VERSION_TAG: version, "fer/attempt": str(len(failed) + 1)},
                run_config=expand_run_config(e.key),
            )
        )
    return requests


def _repairs(context, dsn, lake, embedder, settings, loading, gate, marks, restored) -> list[dg.RunRequest]:
    """Repair runs for partitions whose layers disagree (not those this tick already loads into). A failing
    audit (an unreadable model, a lake hiccup) is logged and never stops the pickup of files. An audit in
    agreement is recorded with the marks read before it: later ticks with the same marks skip it."""
    try:
        with connect(dsn) as conn:
            audit = audit_layers(
                context.instance, conn, lake.storage(), embedder.model_id()
            )  # restored above
    except Exception as exc:  # noqa: BLE001 - one line; the next tick audits again
        context.log.warning(
            f"could not audit the layers this tick: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        )
        return []
    if marks is not None:
        audited(gate, marks, audit.ok and not restored)
    if audit.ok:
        return []
    requests, given_up = repair_requests(
        context.instance, audit, settings.max_attempts, "landing_sensor", settings.retry_after_seconds
    )
    requests = [r for r in requests if r.partition_key not in loading or r.partition_key is None]
    for line in audit.lines()[:20]:
        context.log.warning(f"layers disagree: {line}")
    if given_up:
        context.log.warning(
            f"repairs failed {settings.max_attempts} times, left to a person: {', '.join(given_up)}"
        )
    return requests


publish_automation = dg.AutomationConditionSensorDefinition(
    "publish_automation",
    target=dg.AssetSelection.assets(*PUBLISH_ASSETS),
    default_status=default_status(),
    minimum_interval_seconds=automation_interval(),
    description="Declarative automation of gold and the search index (they follow silver).",
)
