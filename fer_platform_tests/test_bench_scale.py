"""bench/bench_scale.py's own parts: the generated landing zone, the demo's runs read back from a real
Dagster instance, per-stage attribution of time and memory, and the cost ratios between sizes. The whole
harness (a demo of a few hundred images takes 1-2 min here) is run by hand, not by the suite."""

import hashlib
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from fer_platform.core.images import validate
from fer_platform.core.layout import route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_scale  # noqa: E402


def test_sizes_and_fer_proportions():
    assert bench_scale.parse_sizes(["35887,250_000", "2000"]) == [35887, 250000, 2000]
    with pytest.raises(ValueError):
        bench_scale.parse_sizes(["3"])
    full = bench_scale.fer_counts(bench_scale.FER_SIZE)
    assert full == {(s, e): bench_scale.FER_COUNTS[s][e] for s, e in full}
    for n in (14, 15, 200, 2000, 250_000):
        counts = bench_scale.fer_counts(n)
        assert sum(counts.values()) == n and min(counts.values()) >= 1
    big = bench_scale.fer_counts(250_000)
    assert big[("train", "happy")] > big[("train", "angry")] > big[("train", "disgust")]


def test_generated_images_load_as_fer_images(tmp_path):
    report = bench_scale.generate(tmp_path, 60, seed=3, workers=1)
    files = sorted(tmp_path.rglob("*.png"))
    assert report["images"] == len(files) == 60
    counts = bench_scale.fer_counts(60)
    for (split, emotion), count in counts.items():
        assert len(list((tmp_path / split / emotion).glob("*.png"))) == count
    contents = [f.read_bytes() for f in files]
    assert len({hashlib.sha256(c).hexdigest() for c in contents}) == 60  # no two alike: none a duplicate
    for f, data in zip(files, contents, strict=True):
        rel = f.relative_to(tmp_path).as_posix()
        info = validate(data, rel)  # raises InvalidImage on anything the platform would quarantine
        assert (info.width, info.height, info.mode) == (48, 48, "L")
        assert route(rel).emotion == rel.split("/")[1] and route(rel).problem is None


@dg.op
def slow(context) -> int:
    time.sleep(0.3)
    return 1


@dg.op
def quick(context, x: int) -> int:
    time.sleep(0.05)
    return x


@dg.job
def two_steps():
    quick(slow())


def test_runs_read_back_and_attributed_per_stage():
    with dg.DagsterInstance.ephemeral() as instance:
        demo_start = time.time()
        time.sleep(0.2)
        ran = []
        for _ in range(2):
            result = two_steps.execute_in_process(instance=instance)
            ran.append({"run_id": result.run_id, "job": "two_steps", "success": result.success})
            time.sleep(0.1)
        demo_end = time.time()
        runs, steps = bench_scale.read_runs(instance, ran)
    assert [r.run for r in runs] == [r["run_id"] for r in ran]
    assert sorted(s.step for s in steps) == ["quick", "quick", "slow", "slow"]
    for s in steps:
        run = next(r for r in runs if r.run == s.run)
        assert run.start <= s.start < s.end <= run.end
    quick_steps = [s for s in steps if s.step == "quick"]
    spike = (quick_steps[1].start + quick_steps[1].end) / 2
    # memory samples every 10 ms over the whole demo, with one spike while the second `quick` step ran
    samples = []
    t = demo_start
    while t < demo_end:
        samples.append((t, 100 * 2**20, 10 * 2**20))
        t += 0.01
    samples.append((spike, 900 * 2**20, 50 * 2**20))
    samples.sort()
    rows = {r["stage"]: r for r in bench_scale.stages(10, runs, steps, samples, demo_start, demo_end)}
    assert rows["slow"]["count"] == 2 and rows["slow"]["seconds"] >= 0.6
    assert rows["slow"]["seconds"] == pytest.approx(rows["slow"]["busy_seconds"])  # one after the other
    assert rows["slow"]["ms_per_image"] == pytest.approx(1000 * rows["slow"]["seconds"] / 10, rel=1e-3)
    assert rows["quick"]["peak_demo_rss_mib"] == 900 and rows["quick"]["peak_postgres_pss_mib"] == 50
    assert rows["slow"]["peak_demo_rss_mib"] == 100
    startup, between = rows["demo: start-up + planning"], rows["demo: between runs"]
    assert startup["seconds"] >= 0.2 and between["count"] == 1 and between["seconds"] >= 0.1
    total = sum(r["seconds"] for r in rows.values())
    assert total == pytest.approx(demo_end - demo_start, abs=0.01)  # every second of the demo is somewhere


def test_overlapping_steps_count_once_in_busy_time():
    assert bench_scale.union_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert bench_scale.union_seconds([]) == 0


def test_cost_ratios_flag_stages_that_grow():
    def result(n, per_image):
        return {"n": n, "stages": [{"stage": k, "ms_per_image": v} for k, v in per_image.items()]}

    ratios = bench_scale.cost_ratios(
        result(100, {"raw_images": 1.0, "gold_neighbour_agreement": 2.0, "only_small": 1.0}),
        result(700, {"raw_images": 1.1, "gold_neighbour_agreement": 14.0, "search_index": 1.0}),
    )
    by = {r["stage"]: r for r in ratios}
    assert by["raw_images"]["ratio"] == pytest.approx(1.1) and not by["raw_images"]["flagged"]
    assert by["gold_neighbour_agreement"]["ratio"] == pytest.approx(7.0)
    assert by["gold_neighbour_agreement"]["flagged"]
    assert by["only_small"]["ratio"] is None and by["search_index"]["ratio"] is None
