"""What each Ray actor runs: the GGUF loaded once, then Arrow batches of texts chunked and embedded.

Chunking happens here, beside the model, because it needs the model's tokenizer; it is the same
Chunker `embed --files` uses, so chunks, offsets and token counts are the same. Chunks whose id
is already in the sink are cut before embedding: a resumed job pays for tokenizing them, not
for embedding them.
"""

from __future__ import annotations

from ..embed import Embedder
from ..files import Chunker, Document
from .identity import chunk_id, contains, id_set, text_source


def output_schema(dim: int):
    """The rows every sink holds: embed --files's record fields, the model, token count, text, vector."""
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("path", pa.string()), ("chunk", pa.int64()), ("start", pa.int64()),
        ("end", pa.int64()), ("dim", pa.int64()), ("model", pa.string()), ("n_tokens", pa.int64()),
        ("text", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
    ])


class ChunkEmbedder:
    """Chunks and embeds one Arrow table of texts at a time (the `map_batches` callable class).

    Rows with an empty or missing text are skipped. A row's source (what its ids hash) is its
    `id_column` value, or its text's hash without one; it is written as the `path` field.
    """

    def __init__(self, model: str, *, model_key: str, fingerprint: str, dim: int, text_column: str = "text",
                 id_column: str | None = None, prompt_name: str | None = None, instruction: str | None = None,
                 chunk_tokens: int | None, overlap: int | None, max_tokens: int, threads: int, gpu: bool,
                 skip_ids=None):
        self.embedder = Embedder(model, device="gpu" if gpu else "cpu", threads=threads, max_tokens=max_tokens)
        self.chunker = Chunker(self.embedder, chunk_tokens, overlap)
        self.model_key, self.fingerprint, self.dim = model_key, fingerprint, dim
        self.text_column, self.id_column = text_column, id_column
        self.prompt_name, self.instruction = prompt_name, instruction
        if skip_ids is not None and not hasattr(skip_ids, "dtype"):   # an object reference
            import ray

            skip_ids = ray.get(skip_ids)
        self.skip_ids = skip_ids if skip_ids is not None else id_set([])

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        sources = batch.column(self.id_column).to_pylist() if self.id_column else [None] * len(texts)
        chunks, ids = [], []
        for text, source in zip(texts, sources):
            if not text or not text.strip():
                continue
            source = text_source(text) if source is None else str(source)
            for chunk in self.chunker.split(Document(source, text, "", 0.0, len(text)))[0]:
                chunks.append(chunk)
                ids.append(chunk_id(source, chunk.index, self.fingerprint))
        new = ~contains(self.skip_ids, ids)
        chunks = [c for c, keep in zip(chunks, new) if keep]
        ids = [i for i, keep in zip(ids, new) if keep]
        if chunks:
            vectors = self.embedder.encode([c.text for c in chunks], prompt_name=self.prompt_name,
                                           instruction=self.instruction, dim=self.dim)
        else:
            vectors = np.zeros((0, self.dim), dtype=np.float32)
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
        return pa.table([
            pa.array(ids, pa.string()),
            pa.array([c.path for c in chunks], pa.string()),
            pa.array([c.index for c in chunks], pa.int64()),
            pa.array([c.start for c in chunks], pa.int64()),
            pa.array([c.end for c in chunks], pa.int64()),
            pa.array([self.dim] * len(chunks), pa.int64()),
            pa.array([self.model_key] * len(chunks), pa.string()),
            pa.array([c.n_tokens for c in chunks], pa.int64()),
            pa.array([c.text for c in chunks], pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, self.dim),
        ], schema=output_schema(self.dim))
