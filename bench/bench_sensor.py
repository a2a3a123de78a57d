"""A landing sensor tick with no new files, at FER2013's size, with the load log as it is and 10x larger, in
one run (ratios; the machine is shared and noisy).

    .venv/bin/python bench/bench_sensor.py [files]        (default 35,887: FER2013's size)

Builds `files` landing files (empty: they are listed, not read), their load-log rows, every layer in
agreement with them (raw manifests, bronze and silver ids, the vectors, the index's id mapping) over 7
emotions x 5 days, then times the whole landing_sensor evaluation (dg.build_sensor_context, as the daemon
evaluates it) once without the sensor's memory and then idle, the listing alone (in full, as before, and
through the folder memory, core/listing.py, as the sensor lists now), and the audit's per-tick
cost (the marks a tick reads; a full audit for comparison). Then the load log grows 10x (rows of another
landing root) and the idle tick is timed again: its cost beyond the listing must not grow.
"""

import datetime as dt
import hashlib
import os
import statistics
import sys
import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import Timer, row, workspace

from fer_platform.automation.sensors import landing_sensor
from fer_platform.core import convergence, ledger, listing, planner
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.listing import ListingMemory
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import PLATFORM_WRITER, VECTOR_INDEX, VECTOR_INDEX_DDL
from fer_platform.core.storage import Storage
from fer_platform.resources import (
    AutoLoaderResource,
    EmbedderResource,
    LakeResource,
    LandingResource,
    PostgresResource,
)

REPEATS = 5
MODIFIED = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)


def rows_for(root: str, n: int, status: str, ids: list[str], days: list[dt.date]) -> list[ledger.LedgerRow]:
    out = []
    for i in range(n):
        emotion, image_id = EMOTIONS[i % 7], ids[i % len(ids)]
        key = f"train/{emotion}/{i:07d}.png"
        out.append(
            ledger.LedgerRow(
                source=f"{root}/{key}",
                path=key,
                size=0,
                modified_at=MODIFIED,
                sha256=image_id,
                emotion=emotion,
                split="train",
                load_date=days[(i // 7) % len(days)],
                status=status,
                reason=None if status == "loaded" else "a copy of a loaded content",
                lake_path=f"raw/{key}",
                run_id="b",
            )
        )
    return out


def setup(root, dsn, n, model) -> None:
    lake, landing = root / "lake", root / "landing"
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    days = [dt.date(2026, 11, 26) + dt.timedelta(days=d) for d in range(5)]
    rows = rows_for(str(landing), n, "loaded", ids, days)
    stamp = MODIFIED.timestamp()
    parts: dict = {}
    for r in rows:
        path = landing / r.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (stamp, stamp))
        parts.setdefault((r.emotion, r.load_date), []).append(r.sha256)
    for (emotion, day), members in parts.items():
        for layer in ("raw/manifest", "bronze/images", "silver/embeddings"):
            path = lake / layer / f"emotion={emotion}" / f"load_date={day}" / "part-0.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"image_id": members, "model": [model] * len(members)}), path)
    index = lake / "index" / model
    index.mkdir(parents=True)
    pq.write_table(pa.table({"image_id": ids}), index / "ids.parquet")
    for name in ("index.faiss", "meta.json"):
        (index / name).write_bytes(b"{}")
    rng = np.random.default_rng(0)
    with connect(dsn) as conn:
        ledger.insert(conn, rows)
        conn.execute(f"DROP INDEX {VECTOR_INDEX}")  # COPY first, the index after: set-up time only
        cols = "filepath, emotion, vector, image_id, split, load_date, model, written_by"
        with conn.cursor().copy(f"COPY imagenes_fer ({cols}) FROM STDIN") as copy:
            for r in rows:
                vec = "[" + ",".join(f"{x:.2f}" for x in rng.standard_normal(512)) + "]"
                copy.write_row(
                    (r.lake_path, r.emotion, vec, r.sha256, "train", r.load_date, model, PLATFORM_WRITER)
                )
        conn.commit()
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute(VECTOR_INDEX_DDL)
        conn.commit()
        conn.execute("ANALYZE")


def main(n: int) -> None:
    with workspace("fersensor-") as (root, _admin, dsn):
        lake_res = LakeResource(url=str(root / "lake"))
        embedder = EmbedderResource(weights="random", lake=lake_res)
        model = embedder.model_id()
        setup(root, dsn, n, model)
        resources = {
            "landing": LandingResource(url=str(root / "landing")),
            "postgres": PostgresResource(dsn=dsn),
            "auto_loader": AutoLoaderResource(settle_seconds=5),
            "lake": lake_res,
            "embedder": embedder,
        }
        instance = dg.DagsterInstance.ephemeral()
        landing, lake = Storage(str(root / "landing")), Storage(str(root / "lake"))
        cursor = [None]

        def sensor_tick() -> float:
            with dg.build_sensor_context(instance=instance, cursor=cursor[0], resources=resources) as ctx:
                with Timer() as t:
                    result = landing_sensor(ctx)
            assert not result.run_requests, [r.tags for r in result.run_requests][:3]
            cursor[0] = result.cursor
            return t.seconds

        def median(fn) -> float:
            return statistics.median(fn() for _ in range(REPEATS))

        def full_listing() -> float:
            with Timer() as t:
                landing.list_files()
            return t.seconds

        memory = ListingMemory(settle_seconds=5)

        def incremental() -> float:
            """The sensor's listing now: folders unchanged since the last tick come from its memory."""
            with Timer() as t:
                files = memory.list_files(landing)
            assert len(files) == n and not memory.full and memory.read == 0, (memory.read, len(files))
            return t.seconds

        def marks() -> float:
            with Timer() as t, connect(dsn) as conn:
                convergence.audit_due(("bench",), convergence.layer_marks(conn, lake, model))
            return t.seconds

        def full_audit() -> float:
            with Timer() as t, connect(dsn) as conn:
                assert convergence.audit(conn, lake, model).ok
            return t.seconds

        def plan(with_memory: bool) -> float:
            """The tick's planning alone (listing + load log + plan_tick), with the sensor's memory or as
            before it (every settled file asked about in the load log)."""

            def every_file(entries):
                with connect(dsn) as conn:
                    return ledger.known_versions(conn, [landing.uri(e.key) for e in entries])

            with Timer() as t:
                files = landing.list_files()
                known = planner.LandingMemory(dsn, landing).known(files) if with_memory else every_file
                settings = planner.AutoLoaderSettings(settle_seconds=5)
                now = time.time_ns() // 1000
                planner.plan_tick(
                    landing, files, known, planner.Watermark.from_json(cursor[0]), settings, now
                )
            return t.seconds

        def measure(label: str) -> dict:
            before = ledger.LOOKUPS["sources"]
            tick = median(sensor_tick)
            asked = ledger.LOOKUPS["sources"] - before
            out = {"tick": tick, "full list": median(full_listing), "marks": median(marks)}

            def afresh() -> float:
                planner._idle.clear()  # the plan made again over every file (the listing still incremental)
                return sensor_tick()

            out["afresh"] = median(afresh)
            memory.list_files(landing)  # its first listing reads everything
            out["list"], out["audit"] = median(incremental), median(full_audit)
            out["plan"], out["old"] = median(lambda: plan(True)), median(lambda: plan(False))
            print(
                f"-- {label}: {asked} landing file(s) asked about in the load log over {REPEATS} idle ticks"
            )
            row(f"idle sensor tick ({label})", out["tick"], "s")
            row(f"  idle tick, the plan made again (no reuse) ({label})", out["afresh"], "s")
            row(f"  full listing, as before ({label})", out["full list"], "s")
            row(f"  listing alone, folders from the memory ({label})", out["list"], "s")
            row(f"  full listing / incremental ({label})", out["full list"] / out["list"], "x")
            row(
                f"  tick beyond the listing ({label})",
                (out["tick"] - out["list"]) / out["list"],
                "x listing",
            )
            row(f"  planning with the memory ({label})", out["plan"], "s")
            row(f"  planning without it, as before ({label})", out["old"], "s")
            row(f"  audit marks per tick ({label})", out["marks"], "s")
            row(f"  full audit, warm ({label})", out["audit"], "s", "(once a change, or 10 min)")
            return out

        print(f"{n} landing files, all in the load log; every layer in agreement")
        with Timer() as first:
            sensor_tick()
        row("first tick (no memory: every file asked about)", first.seconds, "s")
        a = measure("load log 1x")
        extra = rows_for(
            "/elsewhere/landing",
            9 * n,
            "duplicate",
            [hashlib.sha256(b"x").hexdigest()],
            [dt.date(2026, 11, 26)],
        )
        with connect(dsn) as conn:
            ledger.insert(conn, extra)
            conn.commit()
            conn.execute("ANALYZE")
        planner._memory.clear()  # a restarted sensor process: the memory is read back from PostgreSQL,
        planner._idle.clear()  # no idle plan to reuse,
        listing._memories.clear()  # and the landing is listed in full
        with Timer() as restart:
            sensor_tick()
        row("first idle tick of a new process (memory read back), 10x", restart.seconds, "s")
        b = measure("load log 10x")
        beyond = lambda m: m["tick"] - m["list"]  # noqa: E731
        row("growth of the idle tick, 10x load log / 1x", b["tick"] / a["tick"], "x")
        row("growth of the tick beyond the listing, 10x / 1x", beyond(b) / beyond(a), "x")
        row("growth of the planning with the memory, 10x / 1x", b["plan"] / a["plan"], "x")
        row("growth of the planning without it (before), 10x / 1x", b["old"] / a["old"], "x")
        row("growth of the audit marks, 10x / 1x", b["marks"] / a["marks"], "x")
        row("growth of a full audit, 10x / 1x", b["audit"] / a["audit"], "x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 35_887)
