"""Files in, vectors out: walk folders for text files, cut them into token chunks, embed them,
and write the results (JSONL, NPY, Parquet) or keep them in an incremental SQLite collection.

walk (paths → Documents, with skip counts) → chunking (Document → Chunks with character
offsets) → embedding (Chunks → vectors, in batches) → outputs (writers) | store (Collection).
"""

from .chunking import Chunk, Chunker
from .embedding import BATCH_CHUNKS, EmbeddedBatch, embed_documents
from .walk import DEFAULT_CHUNK_TOKENS, STDIN, Counts, Document, TextFiles

__all__ = ["BATCH_CHUNKS", "DEFAULT_CHUNK_TOKENS", "STDIN", "Chunk", "Chunker", "Counts", "Document",
           "EmbeddedBatch", "TextFiles", "embed_documents"]
