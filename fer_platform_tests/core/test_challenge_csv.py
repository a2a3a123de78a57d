"""The FER2013 challenge CSV as a landing source, against a real PostgreSQL: expansion, malformed rows,
exactly once (again, appended, another CSV, rewritten), another shape, streaming."""

import datetime as dt
import io
import os
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
from PIL import Image

from fer_platform.core import challenge
from fer_platform.core.ingest import ingest, pending_files
from fer_platform.core.layout import CSV_SOURCE, route
from fer_platform.core.pg.connect import connect
from fer_platform.core.storage import Storage
from fer_platform_tests.helpers import face

DAY = dt.date(2026, 12, 1)
CODE = {e: str(i) for i, e in enumerate(challenge.EMOTION_CODES)}


def pixels(emotion: str, seed: int) -> str:
    return " ".join(str(v) for v in np.asarray(Image.open(io.BytesIO(face(emotion, seed)))).ravel())


def row(emotion: str, seed: int, usage: str = "Training") -> str:
    return f"{CODE[emotion]},{pixels(emotion, seed)},{usage}\n"


GOOD = [
    ("happy", 1, "Training"),
    ("happy", 2, "PublicTest"),
    ("sad", 3, "PrivateTest"),
    ("angry", 4, "Training"),
    ("neutral", 5, "Training"),
    ("surprise", 6, "PublicTest"),
]


def good_rows(spec=GOOD) -> list[str]:
    return [row(*s) for s in spec]


def bad_rows() -> list[tuple[str, str]]:
    """(line, expected reason fragment) of each kind of malformed row."""
    p = pixels("fear", 9).split()
    return [
        (f"2,{' '.join(p[:-1])},Training\n", "2303 pixels (expected 2304)"),
        (f"2,{' '.join(p[:-1] + ['256'])},Training\n", "pixel 2304 is 256 (expected 0-255)"),
        (f"2,{' '.join(['1.5'] + p[1:])},Training\n", "pixel value '1.5' is not an integer"),
        (f"7,{' '.join(p)},Training\n", "unknown emotion code '7' (expected 0-6)"),
        (f"2,{' '.join(p)},Validation\n", "unknown Usage 'Validation'"),
        (f"2,{' '.join(p)},Training,extra\n", "4 field(s) (expected 3: emotion,pixels,Usage)"),
    ]


def write_csv(path, lines, header="emotion,pixels,Usage\n", at=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join(lines))
    if at is not None:
        os.utime(path, (at, at))


def expand(landing, lake, dsn, key="fer2013.csv"):
    return challenge.expand_csv(
        Storage(str(landing), confined=True),
        key,
        Storage(str(landing), confined=True),
        Storage(str(lake)),
        dsn,
        DAY,
        "run-x",
    )


def load(landing, lake, dsn):
    ls = Storage(str(landing), confined=True)
    return ingest(ls, Storage(str(lake)), dsn, pending_files(ls, dsn)[0], DAY, "run-y")


def load_log(dsn):
    with connect(dsn) as conn:
        cur = conn.execute("SELECT source, path, status, reason, lake_path, emotion, split FROM load_log")
        return [dict(zip([d.name for d in cur.description], r, strict=True)) for r in cur.fetchall()]


def staged(landing):
    return sorted(str(p.relative_to(landing)) for p in (landing / "_csv").rglob("*.png"))


def test_good_rows_are_staged_and_each_malformed_row_quarantined_with_its_number(pg_dsn, landing, lake):
    bad = bad_rows()
    lines = good_rows()[:3] + [b[0] for b in bad] + good_rows()[3:]
    write_csv(landing / "fer2013.csv", lines)

    report = expand(landing, lake, pg_dsn)

    assert report.status == "expanded" and report.good == 6 and report.skipped == 0
    # rows are numbered from 1 after the header: the bad ones are rows 4 to 9
    assert [n for n, _ in report.quarantined] == list(range(4, 10))
    for (n, reason), (_line, expected) in zip(report.quarantined, bad, strict=True):
        assert reason.startswith(f"row {n}: ") and expected in reason, reason
    assert staged(landing) == sorted(
        [
            "_csv/fer2013.csv/train/happy/Training_1.png",
            "_csv/fer2013.csv/test/happy/PublicTest_2.png",
            "_csv/fer2013.csv/test/sad/PrivateTest_3.png",
            "_csv/fer2013.csv/train/angry/Training_10.png",
            "_csv/fer2013.csv/train/neutral/Training_11.png",
            "_csv/fer2013.csv/test/surprise/PublicTest_12.png",
        ]
    )
    # the image holds the row's pixels exactly, as a 48x48 grayscale PNG
    with Image.open(landing / "_csv/fer2013.csv/test/sad/PrivateTest_3.png") as im:
        assert (im.size, im.mode) == ((48, 48), "L")
        assert " ".join(str(v) for v in np.asarray(im).ravel()) == pixels("sad", 3)
    r = route("_csv/fer2013.csv/test/sad/PrivateTest_3.png")
    assert (r.split, r.emotion, r.problem, r.ignored) == ("test", "sad", None, None)
    assert route("fer2013.csv").ignored == route("fer2013/fer2013.csv").ignored == CSV_SOURCE

    uri = Storage(str(landing)).uri("fer2013.csv")
    logged = {x["source"]: x for x in load_log(pg_dsn)}
    assert sorted(logged) == sorted(f"{uri}#row={n}" for n in range(4, 10))
    row5 = logged[f"{uri}#row=5"]
    assert row5["status"] == "quarantined" and "pixel 2304 is 256" in row5["reason"]
    assert (row5["emotion"], row5["split"]) == ("fear", "train")
    assert (lake / row5["lake_path"]).read_text() == bad[1][0]  # the offending line, in the lake's quarantine
    assert row5["lake_path"].startswith("quarantine/2026-12-01/_csv/fer2013.csv/row_5.")

    # the staged images load like any image file
    report = load(landing, lake, pg_dsn)
    assert report.counts == {"loaded": 6}
    assert {o.lake_path for o in report.outcomes} >= {"raw/images/fer2013/test/sad/PrivateTest_3.png"}


def test_again_appended_another_csv_and_rewritten_load_each_row_once(pg_dsn, landing, lake):
    csv = landing / "fer2013.csv"
    write_csv(csv, good_rows()[:4], at=1_700_000_000)
    assert expand(landing, lake, pg_dsn).good == 4
    assert load(landing, lake, pg_dsn).counts == {"loaded": 4}
    before = {p: os.stat(landing / p).st_mtime_ns for p in staged(landing)}

    # the same CSV again: nothing expanded, nothing rewritten
    again = expand(landing, lake, pg_dsn)
    assert again.status == "unchanged" and again.skipped == 4 and again.good == 0
    assert {p: os.stat(landing / p).st_mtime_ns for p in staged(landing)} == before
    assert challenge.unexpanded(Storage(str(landing)), pg_dsn, Storage(str(landing)).list_files()) == []

    # appended: only the new rows, numbered on; an unterminated last line that does not parse (still being
    # written) waits
    extra = good_rows()[4:]
    with open(csv, "a") as f:
        f.write(extra[0] + extra[1][:500])
    appended = expand(landing, lake, pg_dsn)
    assert appended.resumed and appended.skipped == 4 and appended.good == 1 and appended.pending_tail
    assert appended.quarantined == []
    with open(csv, "a") as f:
        f.write(extra[1][500:])
    rest = expand(landing, lake, pg_dsn)
    assert rest.resumed and rest.skipped == 5 and rest.good == 1 and not rest.pending_tail
    assert set(staged(landing)) - set(before) == {
        "_csv/fer2013.csv/train/neutral/Training_5.png",
        "_csv/fer2013.csv/test/surprise/PublicTest_6.png",
    }
    assert load(landing, lake, pg_dsn).counts == {"loaded": 2}

    # the same rows in another CSV: staged, but they load as duplicates
    write_csv(landing / "fer2013/copy.csv", good_rows()[:3])
    assert expand(landing, lake, pg_dsn, "fer2013/copy.csv").good == 3
    assert load(landing, lake, pg_dsn).counts == {"duplicate": 3}

    # rewritten (the first row changed): expanded from the first row again; only the changed row is new
    write_csv(csv, [row("disgust", 11)] + good_rows()[1:], at=1_700_000_500)
    rewritten = expand(landing, lake, pg_dsn)
    assert not rewritten.resumed and rewritten.skipped == 0 and rewritten.good == 6
    counts = load(landing, lake, pg_dsn).counts
    assert counts == {"loaded": 1, "duplicate": 5}
    loaded = [x for x in load_log(pg_dsn) if x["status"] == "loaded"]
    assert len(loaded) == 7 and len({x["lake_path"] for x in loaded}) == 7


def test_a_csv_of_another_shape_is_quarantined_as_a_whole_once(pg_dsn, landing, lake):
    write_csv(landing / "train/happy/labels.csv", ["a.png,happy\n"], header="file,label\n")
    (landing / "empty.csv").write_bytes(b"")
    ls = Storage(str(landing), confined=True)
    reports = challenge.expand_landing(ls, Storage(str(lake)), pg_dsn, DAY)
    assert {r.status for r in reports} == {"quarantined"}
    reasons = {x["path"]: x["reason"] for x in load_log(pg_dsn)}
    assert reasons == {
        "train/happy/labels.csv": "not the FER2013 challenge CSV: header 'file,label' "
        "(expected emotion,pixels,Usage)",
        "empty.csv": "an empty file, not a CSV",
    }
    assert challenge.expand_landing(ls, Storage(str(lake)), pg_dsn, DAY) == []  # told once
    assert len(load_log(pg_dsn)) == 2 and not (landing / "_csv").exists()


def test_a_csv_without_usage_expands_without_a_split(pg_dsn, landing, lake):
    write_csv(landing / "test.csv", [f"3,{pixels('happy', 1)}\n"], header="emotion,pixels\n")
    assert expand(landing, lake, pg_dsn, "test.csv").good == 1
    assert staged(landing) == ["_csv/test.csv/happy/row_1.png"]
    assert load(landing, lake, pg_dsn).counts == {"loaded": 1}


def test_expansion_streams_the_csv(pg_dsn, landing, lake, monkeypatch):
    """A CSV much larger than what expansion holds at once (measured with tracemalloc): a block of the file
    and a batch of images (100 here, so the bound shows on a small file; 2,000 by default, ~5 MB)."""
    monkeypatch.setattr(challenge, "BATCH", 100)
    lines = good_rows()
    n = 1500
    write_csv(landing / "big.csv", [lines[i % len(lines)] for i in range(n)])
    size = (landing / "big.csv").stat().st_size
    tracemalloc.start()
    try:
        report = expand(landing, lake, pg_dsn, "big.csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.good == n and size > 10_000_000
    assert peak < size / 4, (peak, size)


def test_a_link_named_csv_is_quarantined_unopened(pg_dsn, landing, lake, tmp_path):
    outside = tmp_path / "secret.csv"
    write_csv(outside, good_rows()[:1])
    (landing / "fer2013").mkdir()
    (landing / "fer2013" / "fer2013.csv").symlink_to(outside)
    ls = Storage(str(landing), confined=True)
    (report,) = challenge.expand_landing(ls, Storage(str(lake)), pg_dsn, DAY)
    assert report.status == "quarantined" and report.reason == "not a regular file: symbolic link"
    assert [x["reason"] for x in load_log(pg_dsn)] == ["not a regular file: symbolic link"]
    assert not (landing / "_csv").exists()


def test_killed_before_the_checkpoint_the_expansion_is_redone_and_each_row_loads_once(pg_dsn, landing, lake):
    """A real SIGKILL after the staged files are written, before the checkpoint and the bad rows' load-log
    rows commit: the next expansion rewrites the same images and logs each bad row once."""
    write_csv(landing / "fer2013.csv", good_rows()[:3] + [bad_rows()[0][0]])
    code = (
        "import datetime as dt, sys; from fer_platform.core.challenge import expand_csv; "
        "from fer_platform.core.storage import Storage; l = Storage(sys.argv[1], confined=True); "
        "expand_csv(l, 'fer2013.csv', l, Storage(sys.argv[2]), sys.argv[3], dt.date(2026, 12, 1))"
    )
    env = {**os.environ, "FER_FAULTS": "csv.staged=kill"}
    killed = subprocess.run(
        [sys.executable, "-c", code, str(landing), str(lake), pg_dsn], env=env, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL
    before = {p: (landing / p).read_bytes() for p in staged(landing)}
    assert len(before) == 3 and load_log(pg_dsn) == []  # staged, but nothing committed

    report = expand(landing, lake, pg_dsn)
    assert report.good == 3 and len(report.quarantined) == 1 and not report.resumed
    assert {p: (landing / p).read_bytes() for p in staged(landing)} == before  # the same bytes again
    assert load(landing, lake, pg_dsn).counts == {"loaded": 3}
    assert [x["status"] for x in load_log(pg_dsn)].count("quarantined") == 1
    assert expand(landing, lake, pg_dsn).status == "unchanged"
