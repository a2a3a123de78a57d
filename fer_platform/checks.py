"""Asset checks that guard each layer. Checks that protect downstream data are blocking."""


import warnings

import dagster as dg
import pyarrow as pa

from fer_platform.assets.bronze import bronze_images
from fer_platform.core import ledger
from fer_platform.core.checks import bronze_problems
from fer_platform.partitions import image_partitions, partition_of
from fer_platform.resources import PostgresResource


# Partitioned asset checks are a Dagster preview feature; they are what lets a check
# run for exactly the partition a run materialised.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


@dg.asset_check(
    asset=bronze_images,
    partitions_def=image_partitions,
    blocking=True,
    description="Every image is 48x48 grayscale with bytes, image_ids are unique, and the row count "
    "equals the load log's loaded files for the partition.",
)
def bronze_images_valid(
    context: dg.AssetCheckExecutionContext, bronze_images: pa.Table, postgres: PostgresResource
) -> dg.AssetCheckResult:
    emotion, load_date = partition_of(context)
    with postgres.connect() as conn:
        expected = ledger.status_counts(conn, emotion, load_date)["loaded"]
    problems = bronze_problems(bronze_images, expected_rows=expected)
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={"rows": bronze_images.num_rows, "loaded_in_load_log": expected},
    )


ALL_CHECKS = [bronze_images_valid]
