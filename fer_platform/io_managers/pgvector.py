"""The pgvector IO manager: a partition's vectors in PostgreSQL, written by binary COPY.

Output: a ``core.vectors.EmbeddingPlan``; the partition's rows for the plan's model
become exactly the plan's images in one transaction (see core/vectors.py).
Input: the partition's rows for the embedder's current model, as an Arrow table whose
``vector`` column is ``fixed_size_list<float32, 512>`` (``arrow_to_vectors`` gives numpy).
"""

import dagster as dg
import pyarrow as pa

from fer_platform.core.pg.schema import VECTORS_TABLE
from fer_platform.core.vectors import EmbeddingPlan, read_partition, write_partition
from fer_platform.partitions import partition_of
from fer_platform.resources.embedder import EmbedderResource
from fer_platform.resources.postgres import PostgresResource


class PgVectorIOManager(dg.ConfigurableIOManager):
    postgres: PostgresResource
    embedder: EmbedderResource

    def handle_output(self, context: dg.OutputContext, obj: EmbeddingPlan) -> None:
        if not isinstance(obj, EmbeddingPlan):
            raise TypeError(f"the pgvector IO manager stores an EmbeddingPlan, not {type(obj).__name__}")
        total = len(obj)

        def progress(done: int, todo: int) -> None:
            context.log.debug(f"embedded {done}/{todo} new images of {total}")

        with self.postgres.connect() as conn:
            stats = write_partition(conn, obj, on_batch=progress)
        context.add_output_metadata(
            {
                "table": VECTORS_TABLE,
                "model": obj.model,
                "dagster/row_count": stats["rows"],
                "embedded": stats["embedded"],
                "reused": stats["reused"],
                "removed": stats["removed"],
                "write_seconds": stats["seconds"],
                "images_per_second": round(stats["embedded"] / stats["seconds"], 1) if stats["seconds"] else 0.0,
            }
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        emotion, load_date = partition_of(context)
        with self.postgres.connect() as conn:
            return read_partition(conn, emotion, load_date, self.embedder.model_id())
