"""The catalog side of the assets: column schemas (from core/catalog.py, the one place they are written)
as Dagster's ``dagster/column_schema`` metadata, so the UI's Columns section shows them before anything
is materialised."""

import warnings

import dagster as dg

from fer_platform.core import catalog

# raw and silver give their outputs a data version (what automation follows): a beta parameter of Output
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*data_version.*")

COLUMN_SCHEMA = "dagster/column_schema"
ROW_COUNT = "dagster/row_count"
PARTITION_ROW_COUNT = "partition_row_count"  # a partitioned asset's rows in the partition a run wrote


def column_schema(asset: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind, description=description)
            for name, kind, description in catalog.columns(asset)
        ]
    )


def table_metadata(asset: str) -> dict:
    """Definition metadata of a table asset: its column schema."""
    return {COLUMN_SCHEMA: column_schema(asset)}


EMBEDDING_MODEL = dg.AssetKey("embedding_model")
DATA_VERSION_TAG = "dagster/data_version"


def record_served_model(context: dg.AssetExecutionContext, model: str, weights: str) -> bool:
    """The first load records the served model as a materialisation of ``embedding_model`` (which only
    a training run materialises otherwise), from the step that embeds with it: the vector layers' upstream is
    then never "not materialized", and a manual Materialize of them opens no dialog. Only when the latest
    recorded model is not ``model``; returns whether it recorded."""
    event = context.instance.get_latest_materialization_event(EMBEDDING_MODEL)
    latest = event.asset_materialization if event else None
    if latest is not None and (latest.tags or {}).get(DATA_VERSION_TAG) == model:
        return False
    context.log_event(
        dg.AssetMaterialization(
            asset_key=EMBEDDING_MODEL,
            description="the served model, recorded by the load that first embedded with it",
            metadata={"model": model, "weights": weights},
            tags={DATA_VERSION_TAG: model},
        )
    )
    return True
