"""The lake IO manager: Arrow tables as Parquet under Hive-style partition folders.

    <base>/<lake/path>/emotion=<e>/load_date=<d>/part-0.parquet   (partitioned assets)
    <base>/<lake/path>.parquet                                     (unpartitioned assets)

``<lake/path>`` is the asset's ``lake/path`` metadata (e.g. ``bronze/images``),
else its key. Partition columns live in the folder names, not in the files, so
DuckDB (``hive_partitioning=true``), pandas and ``pyarrow.dataset`` read a whole
layer without custom code; on load they are added back as columns.
The base may be a folder, ``s3://...`` or ``abfs://...``: only configuration changes.
"""

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any, BinaryIO, Optional

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from fer_platform.catalog import PARTITION_ROW_COUNT, ROW_COUNT
from fer_platform.core import faults
from fer_platform.core.report import human_bytes
from fer_platform.core.silver_scan import row_group_rows
from fer_platform.core.storage import LakeFiles, Storage, remove_stale_temps, temp_path
from fer_platform.resources.lake import ObjectStore, merged_options

LAKE_PATH = "lake/path"
LAKE_FORMAT = "lake/format"  # "parquet" (default) or "files" (a core.storage.LakeFiles folder)
LATEST = "LATEST"
PART_FILE = "part-0"


def _definition_metadata(context: dg.InputContext | dg.OutputContext) -> dict:
    if isinstance(context, dg.InputContext) and context.upstream_output is not None:
        return dict(context.upstream_output.definition_metadata or {})
    return dict(context.definition_metadata or {})


def _as_table(obj: Any) -> pa.Table:
    if isinstance(obj, pa.Table):
        return obj
    import pandas as pd  # deferred: heavy, and only for a DataFrame output

    if isinstance(obj, pd.DataFrame):
        return pa.Table.from_pandas(obj, preserve_index=False)
    raise TypeError(
        f"the lake IO manager stores pyarrow Tables or pandas DataFrames, not {type(obj).__name__}"
    )


def _temp_beside(path: UPath) -> UPath:
    """A temporary name next to ``path`` that no other writer uses (then renamed over it)."""
    return UPath(temp_path(str(path)))


def _publish(tmp: UPath, path: UPath) -> None:
    """Rename the finished temporary file over ``path``, then remove what killed writes of the same
    place left behind."""
    tmp.rename(path)
    remove_stale_temps(str(path.parent), {path.name})


def hive_values(parts: tuple[str, ...]) -> dict[str, str]:
    return dict(part.split("=", 1) for part in parts if "=" in part)


def add_partition_columns(table: pa.Table, values: dict[str, str]) -> pa.Table:
    for name, value in values.items():
        if name in table.column_names:
            continue
        if name == "load_date":
            arr = pa.array([dt.date.fromisoformat(value)] * table.num_rows, pa.date32())
        else:
            arr = pa.array([value] * table.num_rows, pa.string())
        table = table.append_column(name, arr)
    return table


class HiveParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def __init__(self, base_path: UPath, write_options: Optional[dict] = None):
        super().__init__(base_path=base_path)
        self.write_options = write_options or {}

    def get_asset_relative_path(self, context: dg.InputContext | dg.OutputContext) -> UPath:
        lake_path = _definition_metadata(context).get(LAKE_PATH)
        if lake_path:
            return UPath(str(lake_path))
        return UPath(*context.asset_key.path)

    def get_path_for_partition(self, context, path: UPath, partition: str) -> UPath:
        partitions_def = context.asset_partitions_def
        if isinstance(partitions_def, dg.MultiPartitionsDefinition):
            names = sorted(d.name for d in partitions_def.partitions_defs)
            values = partition.split("/")
        else:
            names, values = ["partition"], [partition]
        for name, value in zip(names, values, strict=True):
            path = path / f"{name}={value}"
        return path / PART_FILE

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if isinstance(obj, LakeFiles):
            self.write_files(context, obj, path.with_suffix(""))
            return
        table = _as_table(obj)
        table = table.drop_columns([c for c in self._hive_values(path) if c in table.column_names])
        self.write_table(table, path)
        meta = {ROW_COUNT: table.num_rows, "lake_uri": dg.MetadataValue.path(str(path))}
        if context.has_asset_partitions:  # the UI's row count is the table's; the partition's beside it
            meta[PARTITION_ROW_COUNT] = table.num_rows
            meta[ROW_COUNT] = self.layer_rows(self._base_path / self.get_asset_relative_path(context))
        context.add_output_metadata(meta)

    @staticmethod
    def layer_rows(root: UPath) -> int:
        """Rows of every partition file of a layer, from the Parquet footers alone (one small read per
        partition, no column read)."""
        total = 0
        for part in root.glob(f"*=*/*=*/{PART_FILE}.parquet"):
            with part.open("rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict:
        """A folder of files lands in ``<lake/path>/<folder>/``, not at the ``<lake/path>.parquet`` that
        Dagster's ``path`` metadata would name: that one names the folder."""
        if isinstance(obj, LakeFiles):
            return {"path": dg.MetadataValue.path(str(self._get_path(context).with_suffix("") / obj.folder))}
        return {}

    def write_table(self, table: pa.Table, path: UPath) -> None:
        # Write beside the target and rename, so a reader never sees half a file (local);
        # object stores publish an object only when its upload completes.
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.protocol in ("", "file", "local"):
            tmp = _temp_beside(path)
            with tmp.open("wb") as f:
                pq.write_table(table, f, **self._options(table))
                faults.point(
                    f"lake.write:{self._layer(path)}"
                )  # before the rename: a killed write leaves tmp
            _publish(tmp, path)
        else:
            with path.open("wb") as f:
                pq.write_table(table, f, **self._options(table))

    def _options(self, table: pa.Table) -> dict:
        """zstd, row groups of ``ROW_GROUP_BYTES`` (readers stream a file a row group at a time), and the
        manager's own options over them."""
        return {"compression": "zstd", "row_group_size": row_group_rows(table), **self.write_options}

    def write_files(self, context: dg.OutputContext, obj: LakeFiles, root: UPath) -> None:
        folder = root / obj.folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in obj.files:  # in order: a file may be made from those before it (a digest list)
            self.write_stream(folder / name, functools.partial(obj.write, name))
        self.write_bytes(root / LATEST, obj.folder.encode())  # published last
        context.add_output_metadata(
            {
                "lake_uri": dg.MetadataValue.path(str(folder)),
                "files": len(obj.files),
                "bytes": obj.bytes,
                "size": dg.MetadataValue.text(human_bytes(obj.bytes)),
            }
        )

    def write_bytes(self, path: UPath, data: bytes) -> None:
        self.write_stream(path, lambda f: f.write(data))

    def write_stream(self, path: UPath, write: Callable[[BinaryIO], Any]) -> None:
        """``write(f)`` into the file at ``path`` (locally into a temp file beside it, renamed over it)."""
        if path.protocol in ("", "file", "local"):
            tmp = _temp_beside(path)
            try:
                with tmp.open("wb") as f:
                    write(f)
            except BaseException:  # a writer that failed part-way (a streamed index): nothing of it stays
                tmp.unlink(missing_ok=True)
                raise
            _publish(tmp, path)
        else:
            with path.open("wb") as f:
                write(f)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pa.Table | LakeFiles:
        if _definition_metadata(context).get(LAKE_FORMAT) == "files":
            root = path.with_suffix("")
            folder = (root / LATEST).read_text().strip()
            files = {p.name: p.read_bytes() for p in (root / folder).iterdir() if p.is_file()}
            return LakeFiles(folder, files)
        with path.open("rb") as f:
            table = pq.read_table(f)
        return add_partition_columns(table, self._hive_values(path))

    def _layer(self, path: UPath) -> str:
        rel = path.parts[len(self._base_path.parts) :]
        return rel[0] if rel else ""

    def _hive_values(self, path: UPath) -> dict[str, str]:
        """Partition values from the folders below the base path (never from the base itself)."""
        return hive_values(path.parts[len(self._base_path.parts) :])


class LakeIOManager(dg.ConfigurableIOManagerFactory):
    """Parquet in the lake: a folder locally, ``s3://bucket/prefix`` or ``abfs://container@account...``
    (``store`` says how to reach it: the same object store resource as the lake's)."""

    base_url: str
    store: Optional[ObjectStore] = None
    storage_options: dict[str, str] = {}

    def create_io_manager(self, context) -> HiveParquetIOManager:
        options = merged_options(self.store, self.storage_options)
        Storage(self.base_url, options).check()  # fail at start, in one line, if the store cannot be reached
        return HiveParquetIOManager(UPath(self.base_url, **options))
