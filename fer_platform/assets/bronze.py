"""bronze_images: one row per loaded image, with its PNG bytes, as Hive-partitioned Parquet."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from fer_platform.catalog import table_metadata
from fer_platform.core import ledger
from fer_platform.core.bronze import bronze_table
from fer_platform.core.checks import bronze_problems
from fer_platform.core.layout import BRONZE_IMAGES
from fer_platform.core.report import human_bytes, markdown_table
from fer_platform.io_managers.parquet import LAKE_PATH
from fer_platform.partitions import image_partitions, partition_of
from fer_platform.resources import LakeResource, PostgresResource


@dg.asset(
    partitions_def=image_partitions,
    io_manager_key="lake_io_manager",
    metadata={LAKE_PATH: BRONZE_IMAGES, **table_metadata("bronze_images")},
    group_name="ingest",
    kinds={"python", "parquet"},
    description="One row per loaded image: image_id (sha256), lake filepath, split, usage (Training, "
    "PublicTest, PrivateTest: from the file name, e.g. a challenge CSV row's), width, height, "
    "mode, bytes, the PNG bytes, source, ingested_at, run id. Hive folders "
    "`emotion={emotion}/load_date={day}`.",
)
def bronze_images(context: dg.AssetExecutionContext, raw_images: pa.Table, lake: LakeResource) -> pa.Table:
    table = bronze_table(raw_images, lake.storage(), context.run.run_id)
    context.add_output_metadata(
        {
            "images": table.num_rows,
            "bytes": dg.MetadataValue.text(human_bytes(pc.sum(table["bytes"]).as_py() or 0)),
            "by_split": dg.MetadataValue.json(
                {s: int(n) for s, n in zip(*_value_counts(table["split"]), strict=True)}
            ),
            "preview": dg.MetadataValue.md(
                markdown_table(
                    table.drop_columns(["png"]).slice(0, 10).to_pylist(),
                    ["name", "split", "width", "height", "mode", "bytes", "image_id"],
                )
            ),
        }
    )
    return table


def _value_counts(column: pa.ChunkedArray) -> tuple[list, list]:
    vc = pc.value_counts(column.fill_null("(none)")) if column.null_count else pc.value_counts(column)
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


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
