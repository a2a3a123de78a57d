"""silver_embeddings: the partition's vectors, validated and L2-normalised, as Hive Parquet."""

import dagster as dg
import pyarrow as pa

from fer_platform.assets.model import embedding_model
from fer_platform.core.layout import SILVER_EMBEDDINGS
from fer_platform.core.report import markdown_table
from fer_platform.core.silver import InvalidVectors, build_silver
from fer_platform.io_managers.parquet import LAKE_PATH
from fer_platform.partitions import image_partitions


@dg.asset(
    partitions_def=image_partitions,
    deps=[embedding_model],  # Dagster's staleness is not transitive: the model is a direct dependency
    io_manager_key="lake_io_manager",
    metadata={LAKE_PATH: SILVER_EMBEDDINGS},
    group_name="embeddings",
    kinds={"python", "parquet"},
    description="Deduplicated, validated (512 dims, finite, norm 1) vectors as fixed_size_list<float32, 512>, "
    "filepath rewritten to the lake path; Hive folders emotion=/load_date=.",
)
def silver_embeddings(context: dg.AssetExecutionContext, image_embeddings: pa.Table) -> pa.Table:
    try:
        table = build_silver(image_embeddings)
    except InvalidVectors as exc:
        raise dg.Failure(description=f"silver_embeddings: {exc}") from None
    models = sorted(set(table["model"].to_pylist()))
    context.add_output_metadata(
        {
            "rows": table.num_rows,
            "duplicates_dropped": image_embeddings.num_rows - table.num_rows,
            "model": ", ".join(models),
            "preview": dg.MetadataValue.md(
                markdown_table(table.drop_columns(["vector"]).slice(0, 10).to_pylist(), ["id", "filepath", "split", "image_id"])
            ),
        }
    )
    return table
