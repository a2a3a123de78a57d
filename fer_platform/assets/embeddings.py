"""image_embeddings: ResNet18 vectors of a bronze partition, made here and written to PostgreSQL +
pgvector."""

import dagster as dg
import pyarrow as pa

from fer_platform.assets.model import embedding_model
from fer_platform.catalog import PARTITION_ROW_COUNT, ROW_COUNT, record_served_model, table_metadata
from fer_platform.core import vectors
from fer_platform.core.pg.schema import VECTORS_TABLE
from fer_platform.core.report import markdown_table, progress_every
from fer_platform.core.vectors import EmbeddingPlan, write_partition
from fer_platform.partitions import image_partitions, partition_of
from fer_platform.resources import EmbedderResource, PostgresResource
from fer_platform.resources.environments import gpu_step_tags


class EmbeddingsConfig(dg.Config):
    force: bool = False
    """Re-embed every image of the partition, even those that already have a vector for this model."""


@dg.asset(
    partitions_def=image_partitions,
    deps=[embedding_model],  # the served model: a new one makes every partition's vectors unsynced
    # only reads them back, for silver: this asset writes its rows itself
    io_manager_key="pgvector_io_manager",
    metadata=table_metadata("image_embeddings"),  # imagenes_fer's columns
    group_name="embeddings",
    kinds={"pytorch", "postgres"},
    op_tags=gpu_step_tags(),  # the GPU workers' queue (Celery), a GPU node (Kubernetes)
    description="One 512-d ResNet18 vector per bronze image and model in the imagenes_fer table "
    "(pgvector, HNSW cosine index; a big load COPYs without it and builds it after). Images that "
    "already have a vector for the model are not "
    "re-embedded; a re-run replaces exactly the partition's rows for the model.",
)
def image_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbeddingsConfig,
    bronze_images: pa.Table,
    embedder: EmbedderResource,
    postgres: PostgresResource,
) -> dg.MaterializeResult:
    """Embeds the partition's new images and writes the partition's rows for the served model, here, in one
    transaction (binary COPY, the model streaming vectors into it). The pgvector IO manager only reads the
    rows back as the input of silver_embeddings."""
    emotion, load_date = partition_of(context)
    model = embedder.served_model()
    if record_served_model(context, model, embedder.weights):  # before the vectors: their provenance names it
        context.log.info(f"recorded the served model {model} (embedding_model)")
    note = embedder.weights_note()
    if note:
        context.log.warning(note)

    def embed(pngs):  # called only for the images without a vector: the model loads only if something is new
        return embedder.load().stream(pngs)

    plan = EmbeddingPlan(
        emotion=emotion,
        load_date=load_date,
        model=model,
        image_ids=bronze_images["image_id"].to_pylist(),
        filepaths=bronze_images["filepath"].to_pylist(),  # lake-relative in every environment
        splits=bronze_images["split"].to_pylist(),
        pngs=vectors.BinaryRows(bronze_images["png"]),  # bytes made a batch at a time, as the model reads
        embed=embed,
        force=config.force,
    )
    with postgres.connect() as conn:
        stats = write_partition(
            conn,
            plan,
            on_batch=progress_every(context.log.info),
        )
        model_rows = vectors.count_model(conn, model)
    seconds = stats["seconds"]
    return dg.MaterializeResult(
        metadata={
            "table": VECTORS_TABLE,
            "model": model,
            # the table's rows of the served model (the UI's row count); the partition's beside it
            ROW_COUNT: model_rows,
            PARTITION_ROW_COUNT: stats["rows"],
            "embedded": stats["embedded"],
            "reused": stats["reused"],
            "removed": stats["removed"],
            "write_seconds": seconds,
            # a bulk load COPYs without the HNSW index and builds it after (core/pg/schema.py)
            "index_deferred": stats["index_deferred"],
            "vector_index": stats["index"],
            "index_seconds": stats["index_seconds"],
            "images_per_second": round(stats["embedded"] / seconds, 1) if seconds else 0.0,
        }
    )


@dg.asset_check(
    asset=image_embeddings,
    partitions_def=image_partitions,
    blocking=True,
    additional_ins={"bronze_images": dg.AssetIn()},
    description="Every bronze image of the partition has exactly one vector for the current model, "
    "no other rows exist, every vector has 512 dims and no NaN/inf (the platform's rows: rows other clients "
    "inserted are counted by imagenes_fer_foreign_rows).",
)
def image_embeddings_complete(
    context: dg.AssetCheckExecutionContext,
    bronze_images: pa.Table,
    postgres: PostgresResource,
    embedder: EmbedderResource,
) -> dg.AssetCheckResult:
    emotion, load_date = partition_of(context)
    with postgres.connect() as conn:
        facts = vectors.partition_check(
            conn, emotion, load_date, embedder.model_id(), bronze_images["image_id"].to_pylist()
        )
    problems = [
        f"{len(facts[k])} {k.replace('_', ' ')} image(s), e.g. {facts[k][0][:12]}"
        for k in ("missing", "extra", "duplicated", "wrong_dims")
        if facts[k]
    ]
    if facts["nonfinite"]:
        problems.append(f"{facts['nonfinite']} vector(s) with NaN/inf")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={"vectors": facts["rows"], "bronze_images": bronze_images.num_rows},
    )


@dg.asset_check(
    asset=image_embeddings,
    partitions_def=image_partitions,
    description="How many rows of imagenes_fer other clients wrote (the classic three-column INSERT), per "
    "writer, model and emotion. The platform never changes, deletes, searches or counts them, so they are "
    "no fault: the check passes and reports them.",
)
def imagenes_fer_foreign_rows(context: dg.AssetCheckExecutionContext, postgres: PostgresResource):
    with postgres.connect() as conn:
        groups = vectors.foreign_rows(conn)
    total = sum(g["rows"] for g in groups)
    return dg.AssetCheckResult(
        passed=True,
        description=f"{total} row(s) of {VECTORS_TABLE} were written by other clients: left alone, not in "
        "silver, not counted by the other checks"
        if total
        else None,
        metadata={
            "foreign_rows": total,
            "by_writer_model_emotion": dg.MetadataValue.md(
                markdown_table(groups, ["written_by", "model", "emotion", "rows"])
            ),
        },
    )
