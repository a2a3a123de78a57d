"""The pgvector IO manager: a partition's vectors read back from PostgreSQL, as the input of silver.

The ``image_embeddings`` asset makes the vectors and writes its rows itself (binary COPY, in one
transaction: see assets/embeddings.py and core/vectors.py) and returns only metadata, so Dagster never hands
this manager an output. Input: the partition's rows for the embedder's current model, as an Arrow table
whose ``vector`` column is ``fixed_size_list<float32, 512>`` (``arrow_to_vectors`` gives numpy).
"""

import dagster as dg
import pyarrow as pa

from fer_platform.core.vectors import read_partition
from fer_platform.partitions import partition_of
from fer_platform.resources.embedder import EmbedderResource
from fer_platform.resources.postgres import PostgresResource


class PgVectorIOManager(dg.ConfigurableIOManager):
    """Reads a partition's vectors of the current model; writing them is the image_embeddings asset's."""

    postgres: PostgresResource
    embedder: EmbedderResource

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        raise TypeError(
            f"the pgvector IO manager only reads vectors; {context.asset_key.to_user_string()} must write "
            f"its rows itself and return a dg.MaterializeResult, not {type(obj).__name__}"
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        emotion, load_date = partition_of(context)
        with self.postgres.connect() as conn:
            return read_partition(conn, emotion, load_date, self.embedder.model_id())
