"""`fer-platform demo`: load a landing zone through every asset, on the local Dagster instance.

Runs are executed in this process (one per partition, no process per step) but
recorded on the PostgreSQL-backed instance, so they show in the UI afterwards.
"""

import json
import os
import sys
import time
from collections import Counter
from typing import Any, Optional

from fer_platform.core import db, ledger
from fer_platform.core.errors import FerError
from fer_platform.core.home import Home, local_dsn, prepare_dagster_home
from fer_platform.core.planner import AutoLoaderSettings, Watermark, plan_tick, versions
from fer_platform.core.sample_data import write_sample_landing
from fer_platform.core.search import index_dir
from fer_platform.core.storage import Storage

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_demo(
    home: Home,
    landing: Optional[str] = None,
    per_class: int = 40,
    test_per_class: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    started = time.monotonic()
    home.create()
    landing_url = landing or os.environ.get("FER_LANDING") or str(home.landing)
    generated = None
    if not landing and not os.environ.get("FER_LANDING") and not any(home.landing.rglob("*")):
        generated = write_sample_landing(home.landing, per_class, test_per_class, seed, defects=True)
    os.environ["FER_HOME"] = str(home.root)
    os.environ["FER_LANDING"] = landing_url

    dsn = local_dsn(home)
    db.ensure_schema(dsn)
    prepare_dagster_home(home, dsn)

    import dagster as dg

    from fer_platform.definitions import build_definitions
    from fer_platform.partitions import partition_key, utc_today
    from fer_platform.resources.environments import resources_for

    defs = build_definitions(resources_for())
    storage = Storage(landing_url)
    listing = storage.list_files()
    with db.connect(dsn) as conn:
        known = ledger.versions_under(conn, storage.uri())
    # the landing sensor's own planning, all at once: every settled file the load log lacks
    everything = AutoLoaderSettings(max_files_per_tick=max(1, len(listing)), settle_seconds=0)
    tick = plan_tick(storage, listing, lambda _entries: known, Watermark(), everything, now_us=time.time_ns() // 1000)
    today = utc_today()

    runs = []
    with dg.DagsterInstance.get() as instance:
        for emotion, entries, _attempt in tick.batches:
            keys = [e.key for e in entries]
            if emotion is None:  # files no emotion partition can take: quarantined with the reason
                job, partition = "landing_triage", None
                config = {"quarantine_unroutable": {"config": {"files": keys}}}
            else:
                job, partition = "ingest_images", partition_key(emotion, today)
                config = {"raw_images": {"config": {"files": keys}}}
            result = defs.resolve_job_def(job).execute_in_process(
                partition_key=partition, run_config={**QUIET_LOGS, "ops": config}, instance=instance,
                raise_on_error=False,
            )  # fmt: skip
            runs.append({"job": job, "partition": f"{emotion}|{today}" if emotion else None, "run_id": result.run_id,
                         "success": result.success, "files": len(keys)})  # fmt: skip
        lake = defs.resources["lake"].storage()
        model = defs.resources["embedder"].model_id()
        if any(r["job"] == "ingest_images" for r in runs) or not lake.exists(f"{index_dir(model)}/meta.json"):
            result = defs.resolve_job_def("publish_gold_and_index").execute_in_process(
                run_config=QUIET_LOGS, instance=instance, raise_on_error=False
            )
            runs.append({"job": "publish_gold_and_index", "partition": None, "run_id": result.run_id,
                         "success": result.success, "files": 0})  # fmt: skip

    summary = summarise(storage, listing, dsn)
    summary.update(layer_counts(lake, dsn, model))
    summary.update(search_example(lake, defs.resources["embedder"].spec(), model))
    summary.update(
        home=str(home.root),
        landing=landing_url,
        sample_data=generated,
        new_files=tick.files,
        runs=runs,
        seconds=round(time.monotonic() - started, 1),
    )
    failed = [r for r in runs if not r["success"]]
    if failed:
        summary["failed_runs"] = failed
    return summary


def summarise(storage: Storage, listing, dsn: str) -> dict[str, Any]:
    """Counts over the files now in the landing zone, from the ledger: they reconcile by construction
    only if every file was logged exactly once, which is what a test checks."""
    from fer_platform.core.layout import route

    ignored = [e.key for e in listing if route(e.key).ignored]
    counted = [e for e in listing if not route(e.key).ignored]
    with db.connect(dsn) as conn:
        rows = ledger.rows_for_versions(conn, versions(storage, counted))
        totals = ledger.status_counts(conn)
    status = Counter(r["status"] for r in rows)
    return {
        "files_seen": len(listing),
        "loaded": status["loaded"],
        "duplicates": status["duplicate"],
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
    from fer_platform.core.silver import count_silver_rows
    from fer_platform.core.vectors import count_model

    with db.connect(dsn) as conn:
        postgres_rows = count_model(conn, model) if model else 0
    return {"model": model, "postgres_rows": postgres_rows, "silver_rows": count_silver_rows(lake, model)}


def search_example(lake: Storage, spec, model: str) -> dict[str, Any]:
    """The index size and one search: the first test image's 10 nearest other images."""
    from fer_platform.core import search

    try:
        index = search.load_index(lake, model)
    except search.IndexUnavailable:
        return {"index_size": 0, "search_example": None}
    rows = index.mapping.select(["image_id", "filepath", "split"]).to_pylist()
    tests = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["filepath"]) or sorted(
        rows, key=lambda r: r["filepath"]
    )
    if not tests:
        return {"index_size": index.size, "search_example": None}
    result = search.find_similar(lake, spec, image_id=tests[0]["image_id"], k=10)
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
    w(f"  quarantined    {len(summary['quarantined'])}\n")
    for q in summary["quarantined"]:
        w(f"    - {q['path']}: {q['reason']}\n")
    w(f"  ignored        {summary['ignored']}\n")
    for key in ("model", "postgres_rows", "silver_rows", "index_size"):
        if key in summary:
            w(f"  {key:<14} {summary[key]}\n")
    example = summary.get("search_example")
    if example:
        q = example["query"]
        w(f"  search         the 10 images nearest to {q['filepath']} ({q['emotion']}):\n")
        for h in example["hits"]:
            w(f"    {h['rank']:>2}. {h['distance']:.4f}  {h['emotion']:<9} {h['filepath']}\n")
        w(f"    {example['same_emotion']} of {len(example['hits'])} share its emotion "
          f"(try: fer-platform search --id {q['image_id']} --sheet sheet.png)\n")  # fmt: skip
    runs = summary["runs"]
    ok = sum(r["success"] for r in runs)
    w(f"  runs           {ok}/{len(runs)} succeeded ({summary['seconds']} s)\n")
    for r in summary.get("failed_runs", []):
        w(f"    FAILED {r['job']} {r['partition'] or ''} run {r['run_id']}\n")
    w("  see them in the UI: make dev  (or fer-platform dev)\n")


def main(home: Home, landing: Optional[str], as_json: bool, **kwargs) -> int:
    try:
        summary = run_demo(home, landing, **kwargs)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        print_human(summary)
    return 1 if summary.get("failed_runs") else 0

