"""fer-platform: facial-expression images from a landing zone through Dagster assets to similarity search.

This module parses the arguments and holds the small commands (sample-data, db, search); demo.py, dev.py
and bulk.py hold the others, instance.py the local Dagster instance they write, and fer_platform/service the
`serve` command. Modules that load Dagster are imported only by the commands that need them, so `db` and
`sample-data` stay fast.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from fer_platform.cli import demo, dev, load_csv
from fer_platform.cli.instance import current_dsn, current_resources, prepare_dagster_home
from fer_platform.core.errors import FerError
from fer_platform.core.home import Home
from fer_platform.core.pg.connect import describe, masked
from fer_platform.core.pg.embedded import embedded_start, embedded_status, embedded_stop
from fer_platform.core.pg.schema import ensure_schema
from fer_platform.core.report import format_distances
from fer_platform.core.sample_data import write_sample_landing
from fer_platform.core.search.index import IndexUnavailable
from fer_platform.core.search.query import QueryError, find_similar
from fer_platform.core.search.sheet import result_sheet


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home", default=argparse.SUPPRESS, help="state folder (env FER_HOME, default ./.fer)"
    )

    p = argparse.ArgumentParser(prog="fer-platform", description=__doc__.split("\n\n")[0], parents=[common])
    sub = p.add_subparsers(dest="command", required=True)

    dm = sub.add_parser(
        "demo", parents=[common], help="load a landing zone through every asset and summarise"
    )
    dm.add_argument("--landing", help="landing folder or URL (default: sample data written under the home)")
    dm.add_argument("--json", action="store_true", help="print one JSON object")
    dm.add_argument("--per-class", type=int, default=40, help="generated train images per emotion")
    dm.add_argument("--test-per-class", type=int, default=10, help="generated test images per emotion")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument(
        "--skip-training",
        action="store_true",
        help="do not train the emotion model (FER_DEMO_TRAIN=0): the approved one or untuned weights serve",
    )

    sd = sub.add_parser(
        "sample-data", parents=[common], help="write a deterministic FER2013-shaped landing folder"
    )
    sd.add_argument("out")
    sd.add_argument("--per-class", type=int, default=40)
    sd.add_argument("--test-per-class", type=int, default=10)
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--defects", action="store_true", help="also write broken and stray files")

    dbp = sub.add_parser("db", parents=[common], help="the embedded PostgreSQL under the home")
    dbp.add_argument("action", choices=["start", "stop", "status", "url"])

    dv = sub.add_parser("dev", parents=[common], help="Dagster UI + daemon on the PostgreSQL instance")
    dv.add_argument("--host", default="127.0.0.1")
    dv.add_argument("--port", type=int, default=3000)
    dv.add_argument("--landing", help="landing folder or URL (env FER_LANDING)")
    bl = sub.add_parser(
        "bulk-load",
        parents=[common],
        help="first load of a large landing folder: one backfill, run by the daemon of `fer-platform dev`",
    )
    bl.add_argument("--host", default="127.0.0.1", help="where the UI listens, for the progress link")
    bl.add_argument("--port", type=int, default=3000, help="where the UI listens, for the progress link")
    bl.add_argument("--wait", action="store_true", help="wait until every run of the backfill has finished")

    wk = sub.add_parser(
        "worker",
        parents=[common],
        help="a Celery worker for FER_EXECUTOR=celery / FER_RUN_LAUNCHER=celery (dagster-celery)",
    )
    wk.add_argument(
        "-q", "--queue", action="append", default=[], help="queue to take (repeatable; default: dagster)"
    )
    wk.add_argument("-c", "--concurrency", type=int, default=1, help="tasks at a time (default 1)")
    wk.add_argument("-n", "--name", help="the worker's name (default: dagster-<id>@<host>)")
    lc = sub.add_parser(
        "load-csv",
        parents=[common],
        help="expand a FER2013 challenge CSV (emotion,pixels,Usage) anywhere on disk into the landing zone",
    )
    lc.add_argument("path", help="the CSV file (e.g. fer2013.csv)")
    lc.add_argument("--json", action="store_true", help="print one JSON object")

    se = sub.add_parser(
        "search", parents=[common], help="the images most similar to an image or a loaded image id"
    )
    query = se.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="a query image file (embedded with the index's model)")
    query.add_argument("--id", dest="image_id", help="the image_id (sha256) of a loaded image")
    se.add_argument("-k", type=int, default=10, help="how many neighbours (default 10)")
    se.add_argument("--emotion", help="only neighbours of this emotion")
    se.add_argument(
        "--backend",
        choices=["index", "pgvector"],
        default="index",
        help="the FAISS index in the lake (default) or PostgreSQL's HNSW index",
    )
    se.add_argument("--json", action="store_true", help="print one JSON object")
    se.add_argument("--sheet", help="write a contact sheet PNG of the query and its neighbours")

    sv = sub.add_parser(
        "serve", parents=[common], help="the search API (OpenAPI) and its page, kept warm, until stopped"
    )
    sv.add_argument("--host", help="address to listen on (env FER_SERVE_HOST, default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (env FER_SERVE_PORT, default 8000; 0: any free port)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    home = Home.resolve(getattr(args, "home", None))
    try:
        return _dispatch(args, home)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args, home: Home) -> int:
    if args.command == "demo":
        return demo.main(
            home,
            args.landing,
            args.json,
            per_class=args.per_class,
            test_per_class=args.test_per_class,
            seed=args.seed,
            train=False if args.skip_training else None,
        )
    if args.command == "sample-data":
        counts = write_sample_landing(args.out, args.per_class, args.test_per_class, args.seed, args.defects)
        print(
            f"wrote {counts['images']} images"
            + (f" and {counts['defects']} defects" if args.defects else "")
            + f" to {args.out}"
        )
        return 0
    if args.command == "db":
        return _db(args.action, home)
    if args.command == "bulk-load":
        from fer_platform.cli import bulk  # deferred: loads dagster

        os.environ["FER_HOME"] = str(home.root)
        return bulk.run(home, args.host, args.port, args.wait)
    if args.command == "worker":
        from fer_platform.cli import worker  # deferred: loads dagster

        return worker.run(home, args.queue, args.concurrency, args.name)
    if args.command == "search":
        return _search(args, home)
    if args.command == "load-csv":
        return load_csv.run(home, args.path, args.json)
    if args.command == "dev":
        return dev.run(home, args.host, args.port, args.landing)
    if args.command == "serve":
        from fer_platform.service import server  # deferred: loads FastAPI, uvicorn and dagster

        os.environ["FER_HOME"] = str(home.root)
        return server.run(args.host, args.port)
    raise AssertionError(args.command)


def _db(action: str, home: Home) -> int:
    external = os.environ.get("FER_PG_DSN")
    if action == "start":
        # an external server as the environment's runs reach it (an Entra token with FER_PG_ENTRA_AUTH)
        dsn = current_dsn(home) if external else embedded_start(home.postgres)
        ensure_schema(dsn)
        prepare_dagster_home(home, dsn)  # for Dagster's own commands (README: running any job or partition)
        print(f"PostgreSQL ready at {describe(dsn)}; Dagster instance in {home.dagster}")
    elif action == "stop":
        if external:
            print("FER_PG_DSN names an external server; nothing to stop")
        else:
            print("stopped" if embedded_stop(home.postgres) else "not running")
    elif action == "status":
        status = {"external": describe(external)} if external else embedded_status(home.postgres)
        print(json.dumps(status))
        return 0 if external or status["running"] else 1
    elif action == "url":
        print(masked(external) if external else embedded_start(home.postgres))
    return 0


def _search(args, home: Home) -> int:
    res = current_resources(home, ("lake", "embedder", "postgres"))
    lake, embedder = res["lake"].storage(), res["embedder"]
    image = None
    if args.image:
        try:
            image = Path(args.image).read_bytes()
        except OSError as exc:
            print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        result = find_similar(
            lake,
            embedder.spec(),
            image=image,
            image_id=args.image_id,
            k=args.k,
            emotion=args.emotion,
            backend=args.backend,
            dsn=res["postgres"].get_dsn() if args.backend == "pgvector" else None,
            stamps=home.root / "cache" / "index-stamps",  # a call hashes the index once per build
        )
        if args.sheet:
            Path(args.sheet).write_bytes(result_sheet(result, lake, image))
            result["sheet"] = args.sheet
    except (QueryError, IndexUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(
            f"error: an image of the result is missing from the lake: {exc.filename or exc}", file=sys.stderr
        )
        return 2
    except OSError as exc:
        print(f"error: cannot write the contact sheet {args.sheet}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print_search(result)
    return 0


def print_search(result: dict, out=None) -> None:
    out = out or sys.stdout
    q = result["query"]
    label = q.get("filepath") or q.get("image_id", "")[:12]
    out.write(
        f"query {label}"
        + (f"  ({q['emotion']})" if q.get("emotion") else "")
        + f"  model {result['model']}, "
        f"{result['backend']}"
        + (f", emotion = {result['emotion_filter']}" if result["emotion_filter"] else "")
        + "\n"
    )
    distances = format_distances([h["distance"] for h in result["hits"]], minimum=4)
    for h, d in zip(result["hits"], distances, strict=True):
        out.write(f"  {h['rank']:>3}  {d}  {h['emotion']:<9} {h['split'] or '':<6} {h['filepath']}\n")
    if result.get("same_emotion") is not None:
        out.write(f"  {result['same_emotion']} of {len(result['hits'])} share the query's emotion\n")
    if result.get("sheet"):
        out.write(f"  contact sheet: {result['sheet']}\n")
