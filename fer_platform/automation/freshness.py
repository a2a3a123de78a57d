"""rebuilt_after_silver (rebuilt_after_raw on the load-log tables): a check on each published asset (gold,
the search index) that it was rebuilt within FER_PUBLISH_WITHIN minutes of its upstream's last data change
(core/freshness.py). It runs in the publish job after each rebuild and every 15 minutes on its own
(publish_automation evaluates the checks of its selection), so a stale asset is reported even when nothing
rebuilds it."""

import time
from collections.abc import Iterator

import dagster as dg

from fer_platform.assets.gold import GOLD_ASSETS
from fer_platform.assets.search import search_index
from fer_platform.catalog import DATA_VERSION_TAG
from fer_platform.core.freshness import (
    DEFAULT_WINDOW_MINUTES,
    Freshness,
    UpstreamVersion,
    first_change,
    freshness,
)
from fer_platform.resources.environments import env_float

SILVER = dg.AssetKey("silver_embeddings")
RAW = dg.AssetKey("raw_images")
LAYERS = {SILVER: "silver", RAW: "raw"}
CHECK_EVERY = "*/15 * * * *"
PAGE = 500


def publish_window_minutes() -> float:
    """Minutes within which gold and the index must follow an upstream change (FER_PUBLISH_WITHIN)."""
    return env_float("FER_PUBLISH_WITHIN", DEFAULT_WINDOW_MINUTES, minimum=0.0)


def _version(record) -> str | None:
    return (record.asset_materialization.tags or {}).get(DATA_VERSION_TAG)


def _after(
    instance: dg.DagsterInstance, upstream: dg.AssetKey, after: float | None
) -> Iterator[UpstreamVersion]:
    """The upstream's materialisations after ``after`` (all when None), oldest first, a page at a time."""
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=upstream, after_timestamp=after), PAGE, cursor, ascending=True
        )
        for record in page.records:
            yield UpstreamVersion(record.partition_key or "", _version(record), record.timestamp)
        if not page.has_more:
            return
        cursor = page.cursor


def _version_before(
    instance: dg.DagsterInstance, upstream: dg.AssetKey, partition: str, before: float | None
) -> str | None:
    if before is None:
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=upstream, asset_partitions=[partition], before_timestamp=before), 1
    ).records
    return _version(records[0]) if records else None


def publish_freshness(
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    now: float,
    window_minutes: float,
    upstream: dg.AssetKey = SILVER,
) -> Freshness:
    """From the instance: the asset's last materialisation, then the upstream's materialisations since (and,
    for each partition re-materialised, its version before), up to the first change of a data version."""
    latest = instance.get_latest_materialization_event(asset_key)
    built_at = latest.timestamp if latest else None
    changed = first_change(
        _after(instance, upstream, built_at), lambda p: _version_before(instance, upstream, p, built_at)
    )
    return freshness(built_at, changed, now, window_minutes, LAYERS[upstream])


def upstream_of(asset: dg.AssetsDefinition) -> dg.AssetKey:
    """Silver for the silver-fed assets; raw for the load-log tables (a re-embedding changes silver, not
    them)."""
    return SILVER if SILVER in asset.dependency_keys else RAW


def _rebuilt_after(asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    upstream = upstream_of(asset)
    layer = LAYERS[upstream]

    @dg.asset_check(
        asset=asset,
        name=f"rebuilt_after_{layer}",
        description=f"Rebuilt from {layer} as it is now, or {layer}'s data changed less than "
        f"FER_PUBLISH_WITHIN minutes ago (default {DEFAULT_WINDOW_MINUTES}: rebuild pending). Follows "
        f"{layer}'s data versions: a re-run that changed no partition's images is no change. Runs after "
        "each rebuild and every 15 minutes. A warning: what is published is still right "
        "for the data it was built from.",
        automation_condition=dg.AutomationCondition.cron_tick_passed(CHECK_EVERY),
    )
    def rebuilt_after(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        window = publish_window_minutes()
        verdict = publish_freshness(context.instance, asset.key, time.time(), window, upstream)
        metadata = {"state": verdict.state, "window_minutes": window}
        if verdict.minutes_since_change is not None:
            metadata["minutes_since_change"] = verdict.minutes_since_change
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=verdict.description,
            metadata=metadata,
        )

    return rebuilt_after


FRESHNESS_CHECKS = [_rebuilt_after(asset) for asset in [*GOLD_ASSETS, search_index]]
