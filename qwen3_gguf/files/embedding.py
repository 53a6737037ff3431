"""Embedding documents chunk by chunk, in batches, counting what was done."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .chunking import Chunk, Chunker
from .walk import Counts, Document

BATCH_CHUNKS = 32          # chunks embedded per call, and per database commit in the store


@dataclass
class EmbeddedBatch:
    documents: list[Document]
    chunks: list[Chunk]             # the documents' chunks, in order
    vectors: np.ndarray             # one row per chunk


def embed_documents(embedder, documents: Iterable[Document], chunker: Chunker, *, counts: Counts,
                    dim: int | None = None, instruction: str | None = None, truncate: bool = True,
                    batch_chunks: int | None = None) -> Iterator[EmbeddedBatch]:
    """Chunk and embed documents, yielding batches of whole documents as they are done.

    `instruction` embeds the chunks as queries with that task description; without chunking,
    `truncate=False` makes a document over the token limit an error.
    """
    batch_chunks = batch_chunks or BATCH_CHUNKS
    pending_documents: list[Document] = []
    pending_chunks: list[Chunk] = []
    for document in documents:
        chunks, truncated = chunker.split(document)
        if truncated and not truncate:
            raise UserError(f"{document.path} is longer than {chunker.chunk_tokens + 1} tokens "
                            "(truncation is off; split it with --chunk-tokens)")
        counts.truncated += truncated
        pending_documents.append(document)
        pending_chunks.extend(chunks)
        if len(pending_chunks) >= batch_chunks:
            yield _embedded(embedder, pending_documents, pending_chunks, dim, instruction, counts)
            pending_documents, pending_chunks = [], []
    if pending_documents:
        yield _embedded(embedder, pending_documents, pending_chunks, dim, instruction, counts)


def _embedded(embedder, documents: list[Document], chunks: list[Chunk], dim: int | None,
              instruction: str | None, counts: Counts) -> EmbeddedBatch:
    vectors = embedder.encode([c.text for c in chunks], dim=dim, instruction=instruction)
    counts.chunks += len(chunks)
    counts.tokens += sum(c.n_tokens for c in chunks)
    return EmbeddedBatch(documents, chunks, vectors)
