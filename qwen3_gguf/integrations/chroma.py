"""Chroma 1.x: `Qwen3EmbeddingFunction`, an `EmbeddingFunction` that embeds documents (`__call__`) as they
are and queries (`embed_query`, which Chroma calls for `query_texts`) with the instruction. Needs
`pip install 'qwen3-gguf[chroma]'`.

    collection = client.create_collection("notes", embedding_function=Qwen3EmbeddingFunction(model=gguf))
    collection.add(ids=ids, documents=texts)
    collection.query(query_texts=["what is GGUF?"], n_results=3)

The function is registered by name, so a collection remembers it: `get_collection` rebuilds it from
its config. Chroma also builds a throwaway copy from the config whenever a collection is created, so
each object loads its model on its first call (once), not in the constructor.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..prompts import DEFAULT_INSTRUCTION
from .shared import RetrievalEmbedder, missing_extra

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ModuleNotFoundError as error:
    raise missing_extra("chroma", error) from None


@register_embedding_function
class Qwen3EmbeddingFunction(EmbeddingFunction[Documents]):
    """Qwen3 embeddings for Chroma. `model` is a GGUF path or a catalog name (as `-m`); `dim` keeps the
    first `dim` Matryoshka dimensions; `instruction` is the task description queries are embedded under."""

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 dim: int | None = None, instruction: str = DEFAULT_INSTRUCTION):
        self.model = str(model)
        self.device = device
        self.threads = threads
        self.dim = dim
        self.instruction = instruction

    @functools.cached_property
    def embedder(self) -> RetrievalEmbedder:
        return RetrievalEmbedder(self.model, device=self.device, threads=self.threads, dim=self.dim,
                                 instruction=self.instruction)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embedder.documents(input))

    def embed_query(self, input: Documents) -> Embeddings:
        return list(self.embedder.queries(input))

    @staticmethod
    def name() -> str:
        return "qwen3-gguf"

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "threads": self.threads, "dim": self.dim,
                "instruction": self.instruction}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> Qwen3EmbeddingFunction:
        return Qwen3EmbeddingFunction(**config)

    def default_space(self) -> Space:
        return "cosine"   # the vectors are L2-normalized: cosine is their similarity
