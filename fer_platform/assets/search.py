"""search_index: a FAISS index over every silver partition of the current model, in the lake."""

import dagster as dg

from fer_platform.assets.model import embedding_model
from fer_platform.assets.silver import silver_embeddings
from fer_platform.automation.conditions import FOLLOW_UPSTREAM
from fer_platform.catalog import ROW_COUNT, table_metadata
from fer_platform.core.layout import INDEX
from fer_platform.core.search import build
from fer_platform.core.search.build import RECALL_TARGET, streamed_recall
from fer_platform.core.search.index import MAPPING_COLUMNS, IndexUnavailable, load_index
from fer_platform.core.silver_scan import SilverScan
from fer_platform.core.storage import LakeFiles
from fer_platform.io_managers.parquet import LAKE_FORMAT, LAKE_PATH
from fer_platform.resources import EmbedderResource, LakeResource


class SearchIndexConfig(dg.Config):
    hnsw_threshold: int = build.HNSW_THRESHOLD
    """Below this many vectors the index is exact (flat inner product); at or above, HNSW."""
    hnsw_m: int = build.HNSW_M
    ef_construction: int = build.HNSW_EF_CONSTRUCTION
    target_recall: float = build.RECALL_TARGET
    """HNSW: ef_search is raised until recall@10 on a sample reaches this (checked again by the asset
    check)."""
    segment_size: int = build.SEGMENT_SIZE
    """HNSW: the index is built in segments (graphs) of at most this many vectors, each searched and the
    answers merged: inserting into a graph costs more the bigger it is, a segment's cost stays flat."""


@dg.asset(
    deps=[
        silver_embeddings,
        embedding_model,
    ],  # the model directly: silver has too many partitions for staleness
    io_manager_key="lake_io_manager",
    metadata={LAKE_PATH: INDEX, LAKE_FORMAT: "files", **table_metadata("search_index")},
    group_name="search",
    kinds={"faiss"},
    automation_condition=FOLLOW_UPSTREAM,
    description="FAISS index of every silver vector of the current model (exact below a size threshold, HNSW "
    f"above, in segments of at most {build.SEGMENT_SIZE:,} vectors), with the id mapping as Parquet: "
    "`index/{model}/` holds `index.faiss`, `ids.parquet` (the "
    "columns below: row i of the index is row i there) and `meta.json`.",
)
def search_index(
    context: dg.AssetExecutionContext,
    config: SearchIndexConfig,
    lake: LakeResource,
    embedder: EmbedderResource,
) -> LakeFiles:
    spec = embedder.spec()
    index = build.build_index(
        SilverScan(lake.storage(), embedder.model_id(), MAPPING_COLUMNS),  # read twice, never whole
        embedder.model_id(),
        embedder={
            "weights": spec.weights,
            "profile": spec.profile,
            "seed": spec.seed,
            "fast_size": spec.fast_size,
        },
        hnsw_threshold=config.hnsw_threshold,
        m=config.hnsw_m,
        ef_construction=config.ef_construction,
        target_recall=config.target_recall,
        segment_size=config.segment_size,
    )
    # lands in index/<model>/ (search.index.index_dir); the FAISS file is streamed into the lake by the IO
    # manager, which adds its size to this metadata once written
    files = LakeFiles(index.model, index.file_writers())
    meta = {"vectors": index.size, ROW_COUNT: index.size, "kind": index.kind, "model": index.model}
    if index.kind == "hnsw":  # a flat index is exact: no ef_search, recall 1
        meta["ef_search"] = int(index.meta["ef_search"])
        meta["tuned_recall_at_10"] = round(float(index.meta["tuned_recall"]), 4)
        meta["segments"] = len(index.parts)
    context.add_output_metadata(meta)
    return files


@dg.asset_check(
    asset=search_index,
    blocking=True,
    description=f"recall@10 of the index against exact search over silver, on a sample of queries, is at "
    f"least {RECALL_TARGET}; the index holds exactly the current model's silver vectors.",
)
def search_index_recall(lake: LakeResource, embedder: EmbedderResource) -> dg.AssetCheckResult:
    storage, model = lake.storage(), embedder.model_id()
    # the index as search reads it, its file streamed (never its bytes beside it), and silver streamed
    # beside it, never whole (issue 15: one copy of the vectors in memory)
    try:
        index = load_index(storage, model)
    except IndexUnavailable as exc:
        return dg.AssetCheckResult(passed=False, description=f"the index cannot be read: {exc}")
    measured = streamed_recall(index, SilverScan(storage, model, ("image_id",)).batches)
    problems = []
    if measured["recall"] < RECALL_TARGET:
        problems.append(f"recall@{measured['k']} is {measured['recall']:.3f} < {RECALL_TARGET}")
    if index.size != measured["silver"]:
        problems.append(f"the index holds {index.size} vectors, silver {measured['silver']}")
    if index.model != embedder.model_id():
        problems.append(f"the index is of model {index.model}, the embedder makes {embedder.model_id()}")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or None,
        metadata={
            "recall_at_10": measured["recall"],
            "queries": measured["queries"],
            "vectors": index.size,
            "kind": index.kind,
        },
    )
