"""`fer-platform demo`: load a landing zone through every asset, on the local Dagster instance.

Runs are executed in this process (one per partition, no process per step) but
recorded on the PostgreSQL-backed instance, so they show in the UI afterwards.

With weights that follow the approved emotion model (``auto``, ``tuned``) the demo also trains it: when
none is approved yet (then the new files are loaded as far as bronze first, so every image is embedded
once, by the model that will serve it) or when bronze's train split grew by ``models.RETRAIN_GROWTH``;
then every partition is re-embedded with the new model and gold and the index are published, in the same
demo. ``--skip-training`` / ``FER_DEMO_TRAIN=0`` leave training out.
"""

import contextlib
import fcntl
import json
import logging
import os
import shlex
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from fer_platform.cli.instance import LOCATION, current_resources, prepare_dagster_home
from fer_platform.core import challenge, convergence, gold, ledger, liveness, models, training
from fer_platform.core.bronze import read_bronze
from fer_platform.core.embedding import Embedder
from fer_platform.core.errors import ConfigError, DatabaseUnavailable, FerError
from fer_platform.core.home import Home
from fer_platform.core.layout import route
from fer_platform.core.memory import limit_arenas, release_memory, unpool_large_allocations
from fer_platform.core.pg.connect import connect, describe
from fer_platform.core.pg.schema import DeclaredLoad
from fer_platform.core.planner import AutoLoaderSettings, Watermark, plan_tick, versions
from fer_platform.core.report import format_distances
from fer_platform.core.sample_data import write_sample_landing
from fer_platform.core.search.index import IndexUnavailable, index_dir, load_index
from fer_platform.core.search.query import find_similar
from fer_platform.core.silver import count_silver_rows
from fer_platform.core.silver_scan import read_silver_vectors
from fer_platform.core.storage import Storage
from fer_platform.core.vectors import count_model

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
TRAIN_JOB, REEMBED_JOB = "train_emotion_model", "reembed_images"
# a partition whose only disagreement after a model switch is these layers is re-embedded (reembed_images),
# not re-derived from the load log (raw and bronze are fine)
VECTOR_LAYERS = {"postgres", "silver"}


def demo_trains(train: Optional[bool] = None) -> bool:
    """Whether the demo may train the emotion model: ``--skip-training`` (False) or FER_DEMO_TRAIN
    (default true)."""
    if train is not None:
        return train
    value = os.environ.get("FER_DEMO_TRAIN", "").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"FER_DEMO_TRAIN={value!r} is not a boolean (true/false)")


@contextlib.contextmanager
def python_logs_to(path):
    """Python's own logging (e.g. dagster-postgres retrying a lost database, with tracebacks) goes to a
    file under the home while the demo runs, not to the terminal; the runs' logs stay in Dagster."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved, saved_err = root.handlers[:], sys.stderr
    root.handlers = [handler]
    sys.stderr = _Filtered(saved_err, handler.stream)
    try:
        yield
    finally:
        root.handlers, sys.stderr = saved, saved_err
        handler.close()


class _Filtered:
    """stderr without the lines Dagster writes there directly when its event log is unreachable (they go
    to the log file)."""

    NOISE = ("Exception while writing logger call to event log",)

    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        if text.startswith(self.NOISE):
            self._log.write(text)
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def database_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or unreachable PostgreSQL."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if isinstance(exc, DatabaseUnavailable) or name in (
            "DagsterPostgresException",
            "OperationalError",
            "InterfaceError",
            "AdminShutdown",
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def first_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def run_demo(
    home: Home,
    landing: Optional[str] = None,
    per_class: int = 40,
    test_per_class: int = 10,
    seed: int = 0,
    train: Optional[bool] = None,
) -> dict[str, Any]:
    """``train``: False skips training the emotion model; None asks FER_DEMO_TRAIN (default: train)."""
    started = time.monotonic()
    trains = demo_trains(train)
    limit_arenas()  # before the runs start their threads: what they free is not scattered over arenas
    home.create()
    with home_lock(home):
        return _run_demo(home, landing, per_class, test_per_class, seed, started, trains)


@contextlib.contextmanager
def home_lock(home: Home):
    """One demo at a time on a home: a second one waits for the first (an OS lock, released if the
    holder is killed), then finds everything loaded."""
    with open(home.root / ".demo.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another demo on {home.root} to finish...", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run_demo(
    home: Home,
    landing: Optional[str],
    per_class: int,
    test_per_class: int,
    seed: int,
    started: float,
    trains: bool,
) -> dict[str, Any]:
    landing_url = landing or os.environ.get("FER_LANDING") or str(home.landing)
    generated = None
    if not landing and not os.environ.get("FER_LANDING") and not any(home.landing.rglob("*")):
        generated = write_sample_landing(home.landing, per_class, test_per_class, seed, defects=True)
    os.environ["FER_HOME"] = str(home.root)
    os.environ["FER_LANDING"] = landing_url

    # the environment's lake, landing zone, PostgreSQL and embedder, resolved as a run resolves them (its
    # store's endpoint and credentials applied, each store checked): the demo reads what its runs write
    res = current_resources(home, ("lake", "landing", "postgres", "embedder"))
    dsn = res["postgres"].get_dsn()
    prepare_dagster_home(home, dsn)

    # the code location only now: fer_platform.definitions builds its defs at import from the environment
    # set above
    import dagster as dg  # deferred: loads dagster

    from fer_platform.assets.raw import ingest_run_config  # deferred: loads dagster
    from fer_platform.automation.convergence import REPAIR_TAG, audit_layers  # deferred: loads dagster
    from fer_platform.automation.jobs import triage_run_config  # deferred: loads dagster
    from fer_platform.automation.location_runs import (  # deferred: loads dagster
        LocationOrigin,
        execute_as_location_run,
    )
    from fer_platform.automation.runs import WORKER_TAG, fail_dead_runs, files_of  # deferred: loads dagster
    from fer_platform.definitions import build_definitions  # deferred: loads dagster and every asset module
    from fer_platform.partitions import image_partitions, partition_key, utc_today  # deferred: loads dagster
    from fer_platform.resources.environments import resources_for  # deferred: loads dagster

    defs = build_definitions(resources_for())
    origin = LocationOrigin(LOCATION, str(home.root))  # as `fer-platform dev` serves it (from the home)
    lake, embedder = res["lake"].storage(), res["embedder"]
    # the emotion model is trained when the served weights follow the approved model (auto, tuned): the
    # first time before anything is embedded, so that the images are embedded once, by the model that serves
    model_step = TrainingStep(trains, embedder.weights, embedder.follows_approval)
    first_model = model_step.wanted and models.approved_model(lake) is None
    storage = res["landing"].storage()
    runs: list[dict] = []
    tags = {WORKER_TAG: liveness.this_worker(), "fer/trigger": "demo"}
    # one load of many runs: the vector index is dropped once and built once (pg.schema.DeclaredLoad)
    with dg.DagsterInstance.get() as instance, DeclaredLoad(dsn) as load:
        dead = fail_dead_runs(instance)  # runs of a killed demo (or worker) end as failed, not STARTED
        with connect(dsn) as conn:
            restored = convergence.restore_load_log(conn, lake)
            known = ledger.versions_under(conn, storage.uri())
        challenge_csvs = challenge.expand_landing(storage, lake, dsn, utc_today())  # CSV rows -> images
        listing = storage.list_files()
        # the landing sensor's own planning, all at once: every settled file the load log lacks
        everything = AutoLoaderSettings(max_files_per_tick=max(1, len(listing)), settle_seconds=0)
        tick = plan_tick(
            storage, listing, lambda _entries: known, Watermark(), everything, now_us=time.time_ns() // 1000
        )
        today = utc_today()
        if first_model:  # up front: what training will cost, before the load that precedes it
            model_step.announce(lake, tick, first=True)

        def execute(
            job: str, partition, config: dg.RunConfig | None, extra: dict | None = None, assets=None
        ) -> bool:
            run_config = {**(config.to_config_dict() if config else {}), **QUIET_LOGS}
            # recorded as the UI records a run of the code location (its origin, the job's snapshot), executed
            # here in process
            result = execute_as_location_run(
                instance,
                defs.resolve_job_def(job),
                origin,
                run_config,
                partition_key=str(partition) if partition else None,
                tags={**tags, **(extra or {})},
                assets=[dg.AssetKey(a) for a in assets] if assets else None,
            )
            success = result.status == dg.DagsterRunStatus.SUCCESS
            release_memory()  # what the run freed goes back to the system before the next one
            runs.append(
                {
                    "job": job,
                    "partition": str(partition) if partition else None,
                    "run_id": result.run_id,
                    "success": success,
                    "files": len(files_of(run_config)),
                }
            )
            return success

        # before the first model, the new files go as far as bronze (what training reads): the vectors are
        # made once, below, by the model that will serve them
        ingest_assets = ["raw_images", "bronze_images"] if first_model else None
        load.begin(0 if first_model else new_images(tick))
        for emotion, entries, _attempt in tick.batches:
            keys = [e.key for e in entries]
            if emotion is None:  # files no emotion partition can take: quarantined with the reason
                execute("landing_triage", None, triage_run_config(keys))
            else:
                execute(
                    "ingest_images",
                    partition_key(emotion, today),
                    ingest_run_config(keys),
                    assets=ingest_assets,
                )
        # the emotion model: trained on bronze's train split when there is none yet or that split has grown
        if model_step.wanted:
            model_step.decide(lake)
            if model_step.reason:
                if not first_model:
                    model_step.announce(lake, tick, first=False)
                model_step.run(lambda: execute(TRAIN_JOB, None, None))
                embedder.reread()  # the model approved by the run is what auto/tuned serve now
        model = embedder.model_id()
        switched = first_model or model_step.reason is not None
        # then every partition whose layers disagree with the load log (a crash, an outage, a deleted layer,
        # or a new model: its vectors are missing everywhere)
        with connect(dsn) as conn:
            audit = audit_layers(instance, conn, lake, model)
        if switched:  # every loaded image gets a vector of the new model
            load.begin(loaded_images(dsn))
        repaired, reembedded = [], []
        for emotion, day in audit.partitions:
            if not image_partitions.has_partition_key(partition_key(emotion, day)):
                continue  # a stray lake folder, no partition of this code location: told at the end
            layers = {d.layer for d in audit.disagreements if d.partition == (emotion, day)}
            if switched and layers <= VECTOR_LAYERS:
                execute(REEMBED_JOB, partition_key(emotion, day), None)
                reembedded.append((emotion, day))
                continue
            execute(
                "ingest_images",
                partition_key(emotion, day),
                ingest_run_config(files=[]),
                {REPAIR_TAG: "true"},
            )
            repaired.append((emotion, day))
        load.end()  # the vector index built once, before gold and the search index are published
        ingested = any(r["job"] in ("ingest_images", REEMBED_JOB) for r in runs)
        Embedder.release_all()  # nothing is embedded from here on (a search by id reads the index)
        unpool_large_allocations()  # the index's and silver's temporaries go back when freed
        release_memory()
        if ingested or audit.index_stale or not lake.exists(f"{index_dir(model)}/meta.json"):
            execute("publish_gold_and_index", None, None)
        with connect(dsn) as conn:  # what still disagrees is told, not hidden behind exit 0
            final = audit_layers(instance, conn, lake, model)

    release_memory()
    summary = summarise(storage, listing, dsn)
    summary.update(layer_counts(lake, dsn, model))
    summary.update(search_example(lake, embedder.spec(), model))
    release_memory()  # the index read for the example, before silver is read for the agreement
    agreement = search_agreement(lake, model)
    summary.update(
        home=str(home.root),
        landing=landing_url,
        sample_data=generated,
        new_files=tick.files,
        runs=runs,
        training=model_step.summary(lake, model),
        agreement=agreement,
        reembedded=[f"{e}|{d.isoformat()}" for e, d in reembedded],
        repaired=[f"{e}|{d.isoformat()}" for e, d in repaired],
        restored_load_log_rows=restored,
        challenge_csv=[r.summary() for r in challenge_csvs],
        failed_dead_runs=dead,
        declared_load=load.summary(),
        disagreements=final.lines(),
        seconds=round(time.monotonic() - started, 1),
    )
    failed = [r for r in runs if not r["success"]]
    if failed:
        summary["failed_runs"] = failed
    return summary


def new_images(tick) -> int:
    """The images the tick's ingest runs are about to add (an upper bound: duplicates and bad files among
    them add none)."""
    return sum(len(entries) for emotion, entries, _attempt in tick.batches if emotion is not None)


def loaded_images(dsn: str) -> int:
    with connect(dsn) as conn:
        return int(ledger.status_counts(conn).get("loaded", 0))


class TrainingStep:
    """The demo's emotion model: whether it trains (and why), what that will cost, how it went."""

    def __init__(self, enabled: bool, weights: str, follows_approval: bool):
        self.enabled, self.weights = enabled, weights.strip()
        self.wanted = enabled and follows_approval
        self.reason: Optional[str] = None  # why it trains this run (None: it does not)
        self.train_ids: set[str] = set()
        self.estimate: Optional[float] = None
        self.seconds: Optional[float] = None
        self.success: Optional[bool] = None

    def decide(self, lake: Storage) -> None:
        """Train when bronze's train split has images and no model is approved yet, or when the split grew
        by RETRAIN_GROWTH since the approved model's snapshot (``models.training_due``); a re-run with nothing
        new trains nothing."""
        train = read_bronze(lake, ["image_id"], splits=["train"])
        self.train_ids = set(train["image_id"].to_pylist())
        self.reason = models.training_due(lake, self.train_ids)

    def announce(self, lake: Storage, tick, first: bool) -> None:
        """One line on stderr before training: how many images, about how long on this machine (rates
        measured on a few training steps), and how to skip it."""
        images = read_bronze(lake, ["image_id", "split"], splits=["train", "test"])
        in_bronze = Counter(images["split"].to_pylist())
        pending = Counter(route(e.key).split for _emotion, entries, _ in tick.batches for e in entries)
        train_images = in_bronze["train"] + (pending["train"] if first else 0)
        test_images = in_bronze["test"] + (pending["test"] if first else 0)
        if not train_images:
            return
        rates = training.measure_rates()
        epochs = training.TrainingConfig(min_steps=training.MIN_STEPS).epochs_for(train_images)
        self.estimate = training.estimate_seconds(train_images, test_images, epochs, rates)
        print(
            f"training the emotion model on {'~' if first else ''}{train_images:,} train images: "
            f"{training.describe_seconds(self.estimate)} on this machine ({rates.device}); "
            "--skip-training to skip",
            file=sys.stderr,
            flush=True,
        )

    def run(self, execute) -> None:
        started = time.monotonic()
        self.success = execute()
        self.seconds = round(time.monotonic() - started, 1)

    def summary(self, lake: Storage, model: str) -> dict[str, Any]:
        """What the demo did about the emotion model, and the approved model's test-split figures."""
        out: dict[str, Any] = {"trained": self.reason is not None, "reason": self.reason}
        if not self.enabled:
            out["skipped"] = "--skip-training (or FER_DEMO_TRAIN=0)"
        elif not self.wanted:
            out["skipped"] = (
                f"FER_EMBED_WEIGHTS={self.weights} pins the served model (auto trains and serves the "
                "emotion model)"
            )
        elif self.reason is None:
            out["skipped"] = "the approved model is up to date with the train split"
        if self.reason is not None:
            out.update(success=self.success, seconds=self.seconds, estimate_seconds=self.estimate)
            out["train_images"] = len(self.train_ids)
        record = models.approved_model(lake)
        if record is not None:
            out["approved"] = {
                k: record.get(k)
                for k in (
                    "model",
                    "approved_at",
                    "agreement_at_10",
                    "untuned_agreement_at_10",
                    "centroid_accuracy",
                    "untuned_centroid_accuracy",
                )
            }
        out["served"] = model
        return out


def search_agreement(lake: Storage, model: str) -> dict[str, Any]:
    """Searches for every test image in the served model's vectors: the share of the 10 nearest images
    with the query's emotion, beside chance."""
    return gold.split_agreement(read_silver_vectors(lake, model), "test")


def summarise(storage: Storage, listing, dsn: str) -> dict[str, Any]:
    """Counts over the files now in the landing zone, from the ledger: they reconcile by construction
    only if every file was logged exactly once, which is what a test checks."""
    ignored = [e.key for e in listing if route(e.key).ignored]
    counted = [e for e in listing if not route(e.key).ignored]
    with connect(dsn) as conn:
        rows = ledger.rows_for_versions(conn, versions(storage, counted))
        totals = ledger.status_counts(conn)
    status = Counter(r["status"] for r in rows)
    return {
        "files_seen": len(listing),
        "loaded": status["loaded"],
        "duplicates": status["duplicate"],
        "conflicts": status["conflict"],
        "quarantined": sorted(
            ({"path": r["path"], "reason": r["reason"]} for r in rows if r["status"] == "quarantined"),
            key=lambda q: q["path"],
        ),
        "ignored": len(ignored),
        "not_logged": len(counted) - len(rows),
        "load_log_totals": dict(totals),
    }


def layer_counts(lake: Storage, dsn: str, model: Optional[str]) -> dict[str, Any]:
    """Rows of the current model in PostgreSQL and in the silver layer."""
    with connect(dsn) as conn:
        postgres_rows = count_model(conn, model) if model else 0
    return {"model": model, "postgres_rows": postgres_rows, "silver_rows": count_silver_rows(lake, model)}


def search_example(lake: Storage, spec, model: str) -> dict[str, Any]:
    """The index size and one search: the first test image's 10 nearest other images."""
    try:
        index = load_index(lake, model)
    except IndexUnavailable:
        return {"index_size": 0, "search_example": None}
    rows = index.mapping.select(["image_id", "filepath", "split"]).to_pylist()
    tests = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["filepath"]) or sorted(
        rows, key=lambda r: r["filepath"]
    )
    if not tests:
        return {"index_size": index.size, "search_example": None}
    result = find_similar(lake, spec, image_id=tests[0]["image_id"], k=10, index=index)  # read once
    return {"index_size": index.size, "search_example": result}


def print_human(summary: dict[str, Any], out=sys.stdout) -> None:
    w = out.write
    w(f"fer-platform demo  (home {summary['home']})\n")
    w(f"  landing        {summary['landing']}\n")
    if summary.get("sample_data"):
        s = summary["sample_data"]
        w(f"  sample data    {s['images']} generated faces + {s['defects']} broken/stray files\n")
    w(f"  files seen     {summary['files_seen']}  (new this run: {summary['new_files']})\n")
    w(f"  loaded         {summary['loaded']}\n")
    w(f"  duplicates     {summary['duplicates']}\n")
    if summary.get("conflicts"):
        w(f"  conflicts      {summary['conflicts']}  (same image under several emotions: none loaded)\n")
    w(f"  quarantined    {len(summary['quarantined'])}\n")
    for q in summary["quarantined"]:
        w(f"    - {q['path']}: {q['reason']}\n")
    w(f"  ignored        {summary['ignored']}\n")
    for c in summary.get("challenge_csv", []):
        w(f"  challenge CSV  {c['line']}\n")
        w("".join(f"    - {reason}\n" for reason in c["rows_quarantined"][: challenge.LOGGED_ROWS]))
    for key in ("model", "postgres_rows", "silver_rows", "index_size"):
        if key in summary:
            w(f"  {key:<14} {summary[key]}\n")
    print_training(summary.get("training"), w)
    example = summary.get("search_example")
    if example:
        q = example["query"]
        w(f"  search         the 10 images nearest to {q['filepath']} ({q['emotion']}):\n")
        distances = format_distances([h["distance"] for h in example["hits"]], minimum=4)
        for h, d in zip(example["hits"], distances, strict=True):
            w(f"    {h['rank']:>2}. {d}  {h['emotion']:<9} {h['filepath']}\n")
        w(
            f"    {example['same_emotion']} of {len(example['hits'])} share its emotion "
            f"(try: fer-platform search --id {q['image_id']} --sheet sheet.png)\n"
        )
    agreement = summary.get("agreement")
    if agreement and agreement.get("agreement") is not None:
        w(
            f"  agreement      {agreement['agreement']:.3f} of the {agreement['k']} nearest images of a test "
            f"image share its emotion (+- {agreement.get('ci95') or 0:.3f} at 95 %, from "
            f"{agreement.get('sampled', agreement['queries'])} of {agreement['queries']} test images; "
            f"chance {agreement['chance']:.3f})\n"
        )
    runs = summary["runs"]
    ok = sum(r["success"] for r in runs)
    w(f"  runs           {ok}/{len(runs)} succeeded ({summary['seconds']} s)\n")
    for r in summary.get("failed_runs", []):
        w(f"    FAILED {r['job']} {r['partition'] or ''} run {r['run_id']}\n")
    if summary.get("failed_dead_runs"):
        w(
            f"  marked failed  {len(summary['failed_dead_runs'])} run(s) whose process was gone "
            "(killed earlier)\n"
        )
    if summary.get("restored_load_log_rows"):
        w(f"  load log       put back {summary['restored_load_log_rows']} row(s) from the raw manifests\n")
    if summary.get("reembedded"):
        w(f"  re-embedded    {len(summary['reembedded'])} partition(s) with the new model\n")
    if summary.get("repaired"):
        w(
            f"  repaired       {len(summary['repaired'])} partition(s) whose layers disagreed: "
            f"{', '.join(summary['repaired'])}\n"
        )
    w(f"  see them in the UI: {ui_command(summary)}\n")


def ui_command(summary: dict[str, Any]) -> str:
    """The command that opens the UI on this demo's home (and its landing zone, when not the home's)."""
    cmd = ["fer-platform", "--home", summary["home"], "dev"]
    if summary["landing"] != str(Home(Path(summary["home"])).landing):
        cmd += ["--landing", summary["landing"]]
    return shlex.join(cmd)


def print_training(info: Optional[dict], w) -> None:
    if not info:
        return
    approved = info.get("approved")
    if info["trained"]:
        outcome = "succeeded" if info["success"] else "FAILED (see the run in the UI)"
        w(
            f"  emotion model  trained on {info['train_images']:,} train images in {info['seconds']} s "
            f"({info['reason']}): {outcome}\n"
        )
    elif info.get("skipped"):
        w(f"  emotion model  not trained: {info['skipped']}\n")
    if approved:
        serving = "served" if approved["model"] == info["served"] else "approved, not served"
        w(
            f"                 {approved['model']} ({serving}); its check, the test images among "
            f"themselves: 10-NN agreement {approved['agreement_at_10']:.3f} "
            f"(untuned {approved['untuned_agreement_at_10']:.3f})\n"
        )


def print_disagreements(summary: dict[str, Any], err=sys.stderr) -> None:
    for line in summary.get("disagreements", []):
        err.write(f"disagreement: {line}\n")


def main(home: Home, landing: Optional[str], as_json: bool, **kwargs) -> int:
    log_file = home.root / "logs" / "demo.log"
    try:
        with python_logs_to(log_file):
            summary = run_demo(home, landing, **kwargs)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a lost database is one line; anything else is a bug: raise
        if not database_lost(exc):
            raise
        with open(log_file, "a") as f:
            traceback.print_exception(exc, file=f)
        where = describe(os.environ.get("FER_PG_DSN") or f"host={home.postgres}")
        print(
            f"error: lost the PostgreSQL database at {where} during the demo ({first_line(exc)}): start it "
            "(fer-platform db start, or bring FER_PG_DSN's server back) and run the demo again; it repairs "
            f"what the outage interrupted (details: {log_file} and the runs' event logs)",
            file=sys.stderr,
        )
        return 2
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        print_human(summary)
    print_disagreements(summary)
    return 1 if summary.get("failed_runs") or summary.get("disagreements") else 0
