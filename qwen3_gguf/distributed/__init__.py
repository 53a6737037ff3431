"""Embedding a corpus on Ray Data: the same chunking and model as `embed --files`, on an actor pool.

    from qwen3_gguf.distributed import embed_dataset, embed_into, open_sink, read_files, ray_session

    with ray_session():                                   # or ray_session("ray://head:10001")
        ds = read_files(["docs"])                         # (path, text) rows, walked like embed --files
        rows = embed_dataset(ds, "model.gguf", workers=2, cpus_per_worker=4)   # a ray.data.Dataset

The optional extra `qwen3-gguf[ray]` (Ray Data, pyarrow) is needed, and `qwen3-gguf[lance]` for
LanceDB; importing this package works without them, using it says what to install.
"""

from .identity import ModelIdentity, chunk_id
from .job import JobReport, embed_into
from .lance import LanceCollection
from .pipeline import embed_dataset, ray_session, read_files, read_table, require_ray
from .sinks import LanceSink, ParquetSink, open_sink
from .worker import ChunkEmbedder, output_schema

__all__ = [
    "ChunkEmbedder", "JobReport", "LanceCollection", "LanceSink", "ModelIdentity", "ParquetSink", "chunk_id",
    "embed_dataset", "embed_into", "open_sink", "output_schema", "ray_session", "read_files", "read_table",
    "require_ray",
]
