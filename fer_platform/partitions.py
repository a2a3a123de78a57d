"""Partitions: one partition is the images of one emotion that arrived on one (UTC) day."""

import datetime as dt
import warnings

import dagster as dg

from fer_platform.core.layout import EMOTIONS

PARTITIONS_START = "2025-01-01"

# Partitioned asset checks are a Dagster preview feature; they are what lets a check run for exactly the
# partition a run materialised (the checks beside bronze, embeddings and silver).
warnings.filterwarnings(
    "ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*"
)

emotion_partitions = dg.StaticPartitionsDefinition(list(EMOTIONS))
# end_offset=1: today's date is a valid partition (files picked up today load today).
load_date_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1, timezone="UTC")
image_partitions = dg.MultiPartitionsDefinition(
    {"emotion": emotion_partitions, "load_date": load_date_partitions}
)


def partition_key(emotion: str, load_date: dt.date | str) -> dg.MultiPartitionKey:
    day = load_date.isoformat() if isinstance(load_date, dt.date) else load_date
    return dg.MultiPartitionKey({"emotion": emotion, "load_date": day})


def partition_of(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> tuple[str, dt.date]:
    """(emotion, load_date) of the partition a step materialises."""
    key = context.partition_key
    dims = (
        key.keys_by_dimension
        if isinstance(key, dg.MultiPartitionKey)
        else dict(zip(("emotion", "load_date"), key.split("|"), strict=True))
    )
    return dims["emotion"], dt.date.fromisoformat(dims["load_date"])


def utc_today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()
