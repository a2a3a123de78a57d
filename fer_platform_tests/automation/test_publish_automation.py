"""publish_automation follows data versions, not materialisations: a load of duplicates only rebuilds
neither the silver-fed gold tables nor the index; and the ingest runs record the served model, so the vector
layers' upstream is never "not materialized" (no dialog on a manual Materialize)."""

import dagster as dg

from fer_platform.definitions import build_definitions
from fer_platform.partitions import partition_key, utc_today
from fer_platform_tests.helpers import face, ingester, put

SILVER_FED = {"gold_emotion_summary", "gold_centroid_similarity", "gold_neighbour_agreement", "search_index"}
LOAD_LOG_FED = {"gold_daily_loads", "gold_duplicates"}


def test_a_duplicates_only_load_rebuilds_nothing_that_silver_feeds(resources, landing):
    defs = build_definitions(resources)
    instance = dg.DagsterInstance.ephemeral()
    key = partition_key("happy", utc_today())

    ingest = ingester(defs, instance, key)

    cursor = None

    def requested() -> set[str]:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        # assets only: the freshness checks' quarter-hour cron may tick during the test
        return {
            r.key.to_user_string()
            for r in result.results
            if r.true_subset.size and isinstance(r.key, dg.AssetKey)
        }

    def model_materialisations() -> int:
        return len(instance.fetch_materializations(dg.AssetKey("embedding_model"), limit=10).records)

    for i in range(2):
        put(landing, f"train/happy/{i}.png", face("happy", i))
    first = ingest([f"train/happy/{i}.png" for i in range(2)])
    # the first load recorded the served model: nothing upstream of the vectors is unmaterialised
    assert model_materialisations() == 1
    recorded = instance.get_latest_materialization_event(dg.AssetKey("embedding_model")).asset_materialization
    assert (
        recorded is not None
        and first.run_id == instance.get_latest_materialization_event(dg.AssetKey("embedding_model")).run_id
    )
    assert recorded.metadata["model"].value == recorded.tags["dagster/data_version"]
    requested()  # the automation's first tick; then gold and the index are built
    assert defs.resolve_job_def("publish_gold_and_index").execute_in_process(instance=instance).success
    assert requested() == set()

    # a copy of an image already loaded: a duplicate in the load log, silver as it was
    put(landing, "train/happy/copy of 0.png", face("happy", 0))
    dup = ingest(["train/happy/copy of 0.png"])
    assert dup.asset_materializations_for_node("raw_images")[0].metadata["duplicates"].value == 1
    assert dup.asset_materializations_for_node("silver_embeddings")[0].metadata["rows"].value == 2
    assert model_materialisations() == 1  # still serving the same model: no new materialisation
    after_duplicates = requested()
    assert after_duplicates & SILVER_FED == set()
    assert after_duplicates == LOAD_LOG_FED  # their counts did change: one duplicate more
    # what the daemon does with the requests (a request not yet run would count as handled on the next tick)
    assert (
        defs.resolve_implicit_global_asset_job_def()
        .get_subset(asset_selection={dg.AssetKey(k) for k in after_duplicates})
        .execute_in_process(instance=instance)
        .success
    )
    assert requested() == set()

    # a new image: everything silver feeds follows
    put(landing, "train/happy/2.png", face("happy", 2))
    more = ingest(["train/happy/2.png"])
    assert more.asset_materializations_for_node("silver_embeddings")[0].metadata["rows"].value == 3
    assert SILVER_FED <= requested()
