"""image_embeddings: ResNet18 vectors of a bronze partition, in PostgreSQL + pgvector."""

import dagster as dg
import pyarrow as pa

from fer_platform.assets.model import embedding_model, served_model
from fer_platform.core.vectors import EmbeddingPlan
from fer_platform.partitions import image_partitions, partition_of
from fer_platform.resources import EmbedderResource, LakeResource


class EmbeddingsConfig(dg.Config):
    force: bool = False
    """Re-embed every image of the partition, even those that already have a vector for this model."""


@dg.asset(
    partitions_def=image_partitions,
    deps=[embedding_model],  # the served model: a new one makes every partition's vectors unsynced
    io_manager_key="pgvector_io_manager",
    group_name="embeddings",
    kinds={"pytorch", "postgres"},
    description="One 512-d ResNet18 vector per bronze image and model in the imagenes_fer table "
    "(pgvector, HNSW cosine index). Images that already have a vector for the model are not "
    "re-embedded; a re-run replaces exactly the partition's rows for the model.",
)
def image_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbeddingsConfig,
    bronze_images: pa.Table,
    embedder: EmbedderResource,
    lake: LakeResource,
) -> EmbeddingPlan:
    emotion, load_date = partition_of(context)
    model = served_model(embedder)
    note = embedder.weights_note()
    if note:
        context.log.warning(note)
    storage = lake.storage()
    return EmbeddingPlan(
        emotion=emotion,
        load_date=load_date,
        model=model,
        image_ids=bronze_images["image_id"].to_pylist(),
        filepaths=[storage.uri(p) for p in bronze_images["filepath"].to_pylist()],
        splits=bronze_images["split"].to_pylist(),
        pngs=bronze_images["png"].to_pylist(),
        embed=lambda pngs: embedder.load().stream(pngs),  # the model loads only if something is new
        force=config.force,
    )
