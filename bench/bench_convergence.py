"""What the layer audit adds to every landing sensor tick, at FER2013's size, next to the tick's own
planning, in one run (ratios; the machine is shared and noisy).

    .venv/bin/python bench/bench_convergence.py [images]        (default 35,887: FER2013's size)

Builds the load log, the raw manifests, bronze (image ids only), the vectors (random, binary COPY), silver
and the index's id mapping for `images` images over 7 emotions x 5 days, and a landing folder listing of
the same size, then times: the tick's planning (listing + load-log lookup), the first audit of a process
(every lake partition file read once), a warm audit (a long-lived sensor process: files cached by version),
and the lost-checkpoint check (`restore_load_log` with nothing to restore).
"""

import datetime as dt
import hashlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import Timer, row, workspace

from fer_platform.core import convergence, ledger
from fer_platform.core.layout import EMOTIONS
from fer_platform.core.pg.connect import connect
from fer_platform.core.pg.schema import PLATFORM_WRITER
from fer_platform.core.planner import AutoLoaderSettings, Watermark, plan_tick
from fer_platform.core.storage import Storage

MODEL = "bench-model"


def main(n: int) -> None:
    with workspace("ferconv-") as (root, _admin, dsn):
        lake, landing = root / "lake", root / "landing"
        ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
        days = [dt.date(2026, 11, 26) + dt.timedelta(days=d) for d in range(5)]
        parts = {}
        for i, image_id in enumerate(ids):
            parts.setdefault((EMOTIONS[i % 7], days[(i // 7) % 5]), []).append(image_id)
        modified = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)
        rows = []
        for (emotion, day), members in parts.items():
            for image_id in members:
                key = f"train/{emotion}/{image_id[:16]}.png"
                (landing / "train" / emotion).mkdir(parents=True, exist_ok=True)
                rows.append(
                    ledger.LedgerRow(
                        source=f"{landing}/{key}",
                        path=key,
                        size=2000,
                        modified_at=modified,
                        sha256=image_id,
                        emotion=emotion,
                        split="train",
                        load_date=day,
                        status="loaded",
                        reason=None,
                        lake_path=f"raw/{key}",
                        run_id="b",
                    )
                )
            for layer in ("raw/manifest", "bronze/images", "silver/embeddings"):
                path = lake / layer / f"emotion={emotion}" / f"load_date={day}" / "part-0.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"image_id": members, "model": [MODEL] * len(members)}), path)
        for r in rows[:n]:  # a landing file per image (empty: the listing is what is timed)
            (landing / r.path).touch()
        (lake / "index" / MODEL).mkdir(parents=True)
        pq.write_table(pa.table({"image_id": ids}), lake / "index" / MODEL / "ids.parquet")
        rng = np.random.default_rng(0)
        with connect(dsn) as conn:
            ledger.insert(conn, rows)
            with conn.cursor().copy(
                "COPY imagenes_fer (filepath, emotion, vector, image_id, split, load_date, model, "
                "written_by) "
                "FROM STDIN"
            ) as copy:
                for r in rows:
                    vec = "[" + ",".join(f"{x:.4f}" for x in rng.standard_normal(512)) + "]"
                    copy.write_row(
                        (r.lake_path, r.emotion, vec, r.sha256, "train", r.load_date, MODEL, PLATFORM_WRITER)
                    )
            conn.commit()
            conn.execute("ANALYZE")
        store, landing_store = Storage(str(lake)), Storage(str(landing))
        settings = AutoLoaderSettings(max_files_per_tick=1000, settle_seconds=0)

        def known(entries):
            with connect(dsn) as conn:
                return ledger.known_versions(conn, [landing_store.uri(e.key) for e in entries])

        with Timer() as plan:
            plan_tick(landing_store, landing_store.list_files(), known, Watermark(), settings, now_us=2**62)
        with connect(dsn) as conn:
            with Timer() as cold:
                first = convergence.audit(conn, store, MODEL)
            with Timer() as warm:
                again = convergence.audit(conn, store, MODEL)
            with Timer() as restore:
                restored = convergence.restore_load_log(conn, store)
        assert first.ok and again.ok and restored == 0, first.lines()[:3]
        print(f"{n} images, {len(parts)} partitions, {first.partitions_checked} audited")
        row("tick planning (listing + load-log lookup)", plan.seconds, "s")
        row(
            "layer audit, first in a process (reads every file)",
            cold.seconds,
            "s",
            f"{cold.seconds / plan.seconds:.2f}x the planning",
        )
        row(
            "layer audit, warm (a long-lived sensor process)",
            warm.seconds,
            "s",
            f"{warm.seconds / plan.seconds:.2f}x the planning",
        )
        row(
            "lost-checkpoint check (restore_load_log, nothing lost)",
            restore.seconds,
            "s",
            f"{restore.seconds / plan.seconds:.2f}x the planning",
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 35_887)
