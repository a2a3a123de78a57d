"""Gold: unpartitioned summaries over every silver partition (and the load log), with plots."""

from collections import Counter

import dagster as dg
import pyarrow as pa

from fer_platform.assets.model import embedding_model
from fer_platform.assets.raw import raw_images
from fer_platform.assets.silver import silver_embeddings
from fer_platform.automation.conditions import FOLLOW_UPSTREAM
from fer_platform.catalog import table_metadata
from fer_platform.core import gold, ledger, plots
from fer_platform.core.gold_plots import draw
from fer_platform.core.layout import GOLD
from fer_platform.core.report import markdown_table
from fer_platform.core.silver import count_silver_rows
from fer_platform.core.silver_scan import read_silver_vectors
from fer_platform.io_managers.parquet import LAKE_PATH
from fer_platform.resources import EmbedderResource, LakeResource, PostgresResource

GOLD_KW = dict(
    io_manager_key="lake_io_manager",
    group_name="gold",
    kinds={"python", "parquet"},
    automation_condition=FOLLOW_UPSTREAM,
)


def _preview(table: pa.Table, columns: list[str] | None = None) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(table.to_pylist(), columns or table.column_names, limit=30))


@dg.asset(
    deps=[silver_embeddings, embedding_model],
    metadata={LAKE_PATH: f"{GOLD}/emotion_summary", **table_metadata("gold_emotion_summary")},
    description="Per emotion and split: images, share of total, mean intra-class cosine, and the nearest "
    "other emotion by centroid. Reads every silver partition of the current model.",
    **GOLD_KW,
)
def gold_emotion_summary(
    context: dg.AssetExecutionContext, lake: LakeResource, embedder: EmbedderResource
) -> pa.Table:
    silver = read_silver_vectors(lake.storage(), embedder.model_id())
    table = gold.emotion_summary(silver)
    context.add_output_metadata(
        {
            "images": silver.num_rows,
            "model": embedder.model_id(),
            "class_balance": dg.MetadataValue.md(
                plots.markdown_image(draw("class_balance", table), "class balance")
            ),
            "preview": _preview(table),
        }
    )
    return table


@dg.asset(
    deps=[raw_images],
    metadata={LAKE_PATH: f"{GOLD}/daily_loads", **table_metadata("gold_daily_loads")},
    description="Per load date, from the load log: files seen, loaded, duplicates, label conflicts, "
    "quarantined (by reason), bytes.",
    **GOLD_KW,
)
def gold_daily_loads(context: dg.AssetExecutionContext, postgres: PostgresResource) -> pa.Table:
    with postgres.connect() as conn:
        table = gold.daily_loads(ledger.daily_rows(conn))
    rows = table.to_pylist()
    context.add_output_metadata(
        {
            "days": table.num_rows,
            "files_seen": sum(r["files_seen"] for r in rows),
            "loads": dg.MetadataValue.md(
                plots.markdown_image(
                    plots.bars(
                        [str(r["load_date"]) for r in rows[-30:]],
                        [r["loaded"] for r in rows[-30:]],
                        "Images loaded per day (last 30 load dates)",
                        "images",
                    ),
                    "loads per day",
                )
            ),
            "preview": _preview(table.drop_columns(["quarantined_by_reason"])),
            "quarantine_reasons": dg.MetadataValue.md(
                markdown_table(
                    [{"load_date": r["load_date"], **q} for r in rows for q in r["quarantined_by_reason"]],
                    ["load_date", "reason", "files"],
                    limit=50,
                )
            ),
        }
    )
    return table


@dg.asset(
    deps=[silver_embeddings, embedding_model],
    metadata={LAKE_PATH: f"{GOLD}/centroid_similarity", **table_metadata("gold_centroid_similarity")},
    description="The 7x7 cosine matrix of the emotion centroids of the current model's vectors.",
    **GOLD_KW,
)
def gold_centroid_similarity(
    context: dg.AssetExecutionContext, lake: LakeResource, embedder: EmbedderResource
) -> pa.Table:
    table = gold.centroid_similarity(read_silver_vectors(lake.storage(), embedder.model_id()))
    png = draw("centroids", table)
    context.add_output_metadata(
        {
            "model": embedder.model_id(),
            "heatmap": dg.MetadataValue.md(plots.markdown_image(png, "centroid similarity")),
            # the decimals at which the off-diagonal cosines read apart (they all start 0.99 on real vectors)
            "preview": dg.MetadataValue.md(markdown_table(gold.similarity_rows(table), table.column_names)),
        }
    )
    return table


@dg.asset(
    deps=[silver_embeddings, embedding_model],
    metadata={LAKE_PATH: f"{GOLD}/neighbour_agreement", **table_metadata("gold_neighbour_agreement")},
    description="For each emotion, the share of each image's 10 nearest neighbours (exact cosine over every "
    "image) that carry the same emotion, beside the chance level: how well the embedding separates emotions. "
    f"Estimated from a seeded sample of {gold.SAMPLE_PER_EMOTION} images per emotion (queries), with the "
    "95 % confidence interval's half-width (ci95). Metadata: the same over searches for a sample of the test "
    "images (test_split_agreement_at_10, +- test_split_ci95); figures rounded to 4 places.",
    **GOLD_KW,
)
def gold_neighbour_agreement(
    context: dg.AssetExecutionContext, lake: LakeResource, embedder: EmbedderResource
) -> pa.Table:
    silver = read_silver_vectors(lake.storage(), embedder.model_id())
    table = gold.neighbour_agreement(silver)
    overall = next((r for r in table.to_pylist() if r["emotion"] == "all"), None)
    vectors, labels = gold.vectors_and_labels(silver)
    keep, points = gold.projection_2d(vectors)
    test = gold.split_agreement(silver, "test")  # what a search for a test image returns
    context.add_output_metadata(
        {
            "model": embedder.model_id(),
            "agreement_at_10": float(overall["agreement"]) if overall else 0.0,
            "chance": float(overall["chance"]) if overall else 0.0,
            "agreement_ci95": float(overall["ci95"]) if overall else 0.0,
            "agreement_queries": int(overall["queries"]) if overall else 0,
            "test_split_agreement_at_10": float(test["agreement"] or 0.0),
            "test_split_ci95": float(test["ci95"] or 0.0),
            "test_split_queries": int(test["sampled"]),
            "test_split_chance": float(test["chance"] or 0.0),
            "agreement": dg.MetadataValue.md(
                plots.markdown_image(draw("agreement", table), "neighbour agreement")
            ),
            "projection": dg.MetadataValue.md(
                plots.markdown_image(
                    plots.scatter_2d(points, labels[keep], "Embeddings, 2-D PCA"), "projection"
                )
            ),
            "preview": _preview(table),
        }
    )
    return table


@dg.asset(
    deps=[raw_images],
    metadata={LAKE_PATH: f"{GOLD}/duplicates", **table_metadata("gold_duplicates")},
    description="FER2013's own duplicates, from the load log: one row per content held more than once, "
    "kind label_conflict (filed under several emotions: no copy loaded), train_test_leakage (in train and "
    "test: the test copy kept) or duplicate; emotions, splits, the kept copy, every path.",
    **GOLD_KW,
)
def gold_duplicates(context: dg.AssetExecutionContext, postgres: PostgresResource) -> pa.Table:
    with postgres.connect() as conn:
        table = gold.duplicates(ledger.duplicated_copies(conn))
    kinds = Counter(table["kind"].to_pylist())
    context.add_output_metadata(
        {
            "contents": table.num_rows,
            **{kind: kinds[kind] for kind in gold.DUPLICATE_KINDS},
            "preview": _preview(table, ["kind", "emotions", "splits", "copies", "kept", "paths"]),
        }
    )
    return table


GOLD_ASSETS = [
    gold_emotion_summary,
    gold_daily_loads,
    gold_centroid_similarity,
    gold_neighbour_agreement,
    gold_duplicates,
]


@dg.asset_check(
    asset=gold_duplicates,
    description="No label conflicts (the same image under two emotions) and no train/test leakage in the "
    "landed data. A warning, not a failure: the platform resolves both by rule (conflicts held out, the test "
    "copy kept), and the counts are facts about the source to fix there.",
)
def gold_duplicates_clean(gold_duplicates: pa.Table) -> dg.AssetCheckResult:
    kinds = Counter(gold_duplicates["kind"].to_pylist())
    conflicts, leaks = kinds[gold.LABEL_CONFLICT], kinds[gold.TRAIN_TEST_LEAKAGE]
    problems = [
        f"{n} {what}" for n, what in ((conflicts, "label conflict(s)"), (leaks, "train/test leak(s)")) if n
    ]
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) + " (see gold_duplicates)" if problems else None,
        metadata={
            "label_conflicts": conflicts,
            "train_test_leakage": leaks,
            "plain_duplicates": kinds[gold.DUPLICATE],
        },
    )


@dg.asset_check(
    asset=gold_emotion_summary,
    description="The summary counts every silver image of the current model exactly once.",
)
def gold_summary_counts_silver(
    gold_emotion_summary: pa.Table, lake: LakeResource, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    counted = sum(gold_emotion_summary["images"].to_pylist())
    in_silver = count_silver_rows(lake.storage(), model=embedder.model_id())
    return dg.AssetCheckResult(
        passed=counted == in_silver,
        description=None
        if counted == in_silver
        else f"summary counts {counted} images, silver has {in_silver}",
        metadata={"summary_images": counted, "silver_rows": in_silver},
    )
