"""silver_embeddings: the partition's vectors, validated and L2-normalised, as Hive Parquet."""

import dagster as dg
import pyarrow as pa

from fer_platform.assets.model import embedding_model
from fer_platform.catalog import table_metadata
from fer_platform.core import convergence, ledger, vectors
from fer_platform.core.layout import SILVER_EMBEDDINGS
from fer_platform.core.report import markdown_table
from fer_platform.core.silver import InvalidVectors, build_silver, silver_problems
from fer_platform.io_managers.parquet import LAKE_PATH
from fer_platform.partitions import image_partitions, partition_of
from fer_platform.resources import EmbedderResource, PostgresResource


@dg.asset(
    partitions_def=image_partitions,
    deps=[embedding_model],  # Dagster's staleness is not transitive: the model is a direct dependency
    io_manager_key="lake_io_manager",
    metadata={LAKE_PATH: SILVER_EMBEDDINGS, **table_metadata("silver_embeddings")},
    group_name="embeddings",
    kinds={"python", "parquet"},
    description="Deduplicated, validated (512 dims, finite, norm 1) vectors as `fixed_size_list<float32, "
    "512>`, filepath rewritten to the lake path; Hive folders `emotion={emotion}/load_date={day}`.",
)
def silver_embeddings(context: dg.AssetExecutionContext, image_embeddings: pa.Table) -> dg.Output[pa.Table]:
    try:
        table = build_silver(image_embeddings)
    except InvalidVectors as exc:
        raise dg.Failure(description=f"silver_embeddings: {exc}") from None
    models = sorted(set(table["model"].to_pylist()))
    # the data version is the partition's images and model: a run that adds nothing (duplicates only) leaves
    # it as it was, and gold and the index (which follow data versions) are not rebuilt
    version = convergence.content_version(table["image_id"].to_pylist(), *models)
    return dg.Output(
        table,
        data_version=dg.DataVersion(version),
        metadata={
            "rows": table.num_rows,
            "duplicates_dropped": image_embeddings.num_rows - table.num_rows,
            "model": ", ".join(models),
            "preview": dg.MetadataValue.md(
                markdown_table(
                    table.drop_columns(["vector"]).slice(0, 10).to_pylist(),
                    ["id", "filepath", "split", "image_id"],
                )
            ),
        },
    )


@dg.asset_check(
    asset=silver_embeddings,
    partitions_def=image_partitions,
    blocking=True,
    description="Row-count parity with PostgreSQL for the partition and model (the classic migration's "
    "'verify the row count' step), exactly the load log's loaded images of the partition, plus dims, "
    "finiteness, norm 1 and unique image ids.",
)
def silver_matches_postgres(
    context: dg.AssetCheckExecutionContext,
    silver_embeddings: pa.Table,
    postgres: PostgresResource,
    embedder: EmbedderResource,
) -> dg.AssetCheckResult:
    emotion, load_date = partition_of(context)
    with postgres.connect() as conn:
        in_postgres = vectors.count_partition(conn, emotion, load_date, embedder.model_id())
        logged = [r["image_id"] for r in ledger.partition_rows(conn, emotion, load_date)]
    problems = silver_problems(silver_embeddings)
    if silver_embeddings.num_rows != in_postgres:
        problems.append(f"silver has {silver_embeddings.num_rows} rows, PostgreSQL {in_postgres}")
    # not only the layer before it: the load log's images (a materialisation over lost vectors fails here)
    if convergence.state_of(silver_embeddings["image_id"].to_pylist()) != convergence.state_of(logged):
        problems.append(f"silver does not hold the load log's {len(logged)} loaded images of the partition")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={
            "silver_rows": silver_embeddings.num_rows,
            "postgres_rows": in_postgres,
            "loaded_in_load_log": len(logged),
        },
    )
