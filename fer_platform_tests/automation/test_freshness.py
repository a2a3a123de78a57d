"""rebuilt_after_silver: gold and the index are reported stale only when silver's DATA changed more than the
window ago and they were not rebuilt since: not after a load of duplicates only (no false alarm), and not
while a rebuild is pending within the window. Time is moved by passing ``now``, never by sleeping."""

import datetime as dt
import time

import dagster as dg

from fer_platform.automation.freshness import RAW, SILVER, publish_freshness
from fer_platform.automation.sensors import publish_automation
from fer_platform.core.freshness import UpstreamVersion, first_change, freshness
from fer_platform.definitions import build_definitions
from fer_platform.partitions import partition_key, utc_today
from fer_platform_tests.helpers import face, ingester, put

WINDOW = 30
SILVER_FED = ["gold_emotion_summary", "gold_centroid_similarity", "gold_neighbour_agreement", "search_index"]
CHECK = "rebuilt_after_silver"


def test_first_change_follows_data_versions_not_materialisations():
    before = {"happy|d1": "v1"}.get
    same = [UpstreamVersion("happy|d1", "v1", 10.0), UpstreamVersion("happy|d1", "v1", 20.0)]
    assert first_change(same, before) is None
    changed = [*same, UpstreamVersion("happy|d1", "v2", 30.0), UpstreamVersion("sad|d1", "w", 40.0)]
    assert first_change(changed, before) == 30.0
    assert first_change([UpstreamVersion("sad|d1", "w", 5.0)], before) == 5.0  # a new partition
    assert freshness(None, None, 0.0, WINDOW).passed  # nothing in silver, nothing to publish
    never = freshness(None, 0.0, 31 * 60.0, WINDOW)
    assert not never.passed and "never built" in never.description


def test_stale_only_when_silver_data_changed_longer_ago_than_the_window(resources, landing, monkeypatch):
    defs = build_definitions(resources)
    instance = dg.DagsterInstance.ephemeral()
    key = partition_key("happy", utc_today())

    ingest = ingester(defs, instance, key)

    def verdicts(now: float, names=SILVER_FED, upstream=SILVER):
        return {n: publish_freshness(instance, dg.AssetKey(n), now, WINDOW, upstream) for n in names}

    def silver_version() -> str:
        event = instance.get_latest_materialization_event(SILVER)
        return event.asset_materialization.tags["dagster/data_version"]

    # the checks are in publish_automation's selection, so its cron condition runs them on their own
    checks = publish_automation.asset_selection.resolve_checks(defs.resolve_asset_graph())
    assert {dg.AssetCheckKey(dg.AssetKey(n), CHECK) for n in SILVER_FED} <= checks
    assert dg.AssetCheckKey(dg.AssetKey("gold_daily_loads"), "rebuilt_after_raw") in checks

    for i in range(2):
        put(landing, f"train/happy/{i}.png", face("happy", i))
    ingest([f"train/happy/{i}.png" for i in range(2)])
    # (0) silver changed, nothing published yet: pending within the window, stale after it
    assert all(not v.passed for v in verdicts(time.time() + (WINDOW + 1) * 60).values())

    # (1) after the publish run, whose checks run after each rebuild: pass
    published = defs.resolve_job_def("publish_gold_and_index").execute_in_process(instance=instance)
    assert published.success
    evaluations = {
        e.asset_key.to_user_string(): e
        for e in published.get_asset_check_evaluations()
        if e.check_name == CHECK
    }
    assert set(evaluations) == set(SILVER_FED)
    assert all(e.passed and e.metadata["state"].value == "current" for e in evaluations.values())
    later = time.time() + 3 * 3600
    assert all(v.state == "current" for v in verdicts(later).values())

    # (2) duplicates only: silver re-materialised with the same data version; hours later, still current
    version = silver_version()
    put(landing, "train/happy/copy of 0.png", face("happy", 0))
    dup = ingest(["train/happy/copy of 0.png"])
    assert dup.asset_materializations_for_node("silver_embeddings")  # silver did materialise again ...
    assert silver_version() == version  # ... as it was
    assert all(v.state == "current" for v in verdicts(later).values())
    # the load-log tables follow raw, whose counts the duplicate did change: those are behind, honestly
    loads = verdicts(later, ["gold_daily_loads", "gold_duplicates"], RAW)
    assert all(v.state == "stale" for v in loads.values())

    # (3) a new image: silver's data changed, gold and the index not rebuilt
    put(landing, "train/happy/2.png", face("happy", 2))
    ingest(["train/happy/2.png"])
    assert silver_version() != version
    changed_at = instance.get_latest_materialization_event(SILVER).timestamp
    within = verdicts(changed_at + (WINDOW - 10) * 60)
    assert all(v.passed and v.state == "pending" for v in within.values())
    assert "20.0 min since silver changed" in within["search_index"].description
    past = verdicts(changed_at + (WINDOW + 15) * 60)
    assert all(not v.passed and v.minutes_since_change == WINDOW + 15 for v in past.values())

    # the check itself, as its cron run launches it (no rebuild): with a zero window it warns, with minutes
    monkeypatch.setenv("FER_PUBLISH_WITHIN", "0")
    check_key = dg.AssetCheckKey(dg.AssetKey("search_index"), CHECK)
    alone = (
        defs.resolve_implicit_global_asset_job_def()
        .get_subset(asset_check_selection={check_key})
        .execute_in_process(instance=instance, raise_on_error=False)
    )
    (evaluation,) = alone.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["state"].value == "stale"
    assert evaluation.metadata["minutes_since_change"].value >= 0
    assert not alone.asset_materializations_for_node("search_index")  # only the check ran

    # its cron condition: requested once a quarter-hour tick has passed since the last evaluation
    start = dt.datetime(2026, 1, 5, 10, 1, tzinfo=dt.timezone.utc)
    selection = dg.AssetSelection.checks(check_key)

    def requested(result) -> int:
        return sum(r.true_subset.size for r in result.results if r.key == check_key)

    first = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=selection, evaluation_time=start
    )
    quiet = dg.evaluate_automation_conditions(
        defs=defs,
        instance=instance,
        asset_selection=selection,
        evaluation_time=start + dt.timedelta(minutes=5),
        cursor=first.cursor,
    )
    assert requested(quiet) == 0
    ticked = dg.evaluate_automation_conditions(
        defs=defs,
        instance=instance,
        asset_selection=selection,
        evaluation_time=start + dt.timedelta(minutes=16),
        cursor=quiet.cursor,
    )
    assert requested(ticked) == 1
