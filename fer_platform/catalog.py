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
