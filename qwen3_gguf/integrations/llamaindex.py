"""LlamaIndex: `Qwen3Embedding` (a `BaseEmbedding`) and `Qwen3Rerank` (a node postprocessor). Needs
`pip install 'qwen3-gguf[llamaindex]'`.

    index = VectorStoreIndex.from_documents(documents, embed_model=Qwen3Embedding(model="qwen3-embedding-0.6b"))
    engine = index.as_retriever(similarity_top_k=10)              # the query: with the instruction
    Qwen3Rerank(model="qwen3-reranker-0.6b", top_n=3).postprocess_nodes(engine.retrieve(question), query_str=question)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..errors import UserError
from ..prompts import DEFAULT_INSTRUCTION
from .shared import RetrievalEmbedder, RetrievalReranker, missing_extra

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ModuleNotFoundError as error:
    raise missing_extra("llamaindex", error) from None

# LlamaIndex hands texts over in groups of embed_batch_size; the Embedder batches them by tokens itself.
BATCH_SIZE = 256


class Qwen3Embedding(BaseEmbedding):
    """Qwen3 embeddings for LlamaIndex: texts (nodes) without an instruction, queries with it.

    `model` is a GGUF path or a catalog name (as `-m`), loaded once; `dim` keeps the first `dim`
    Matryoshka dimensions; `instruction` is the task description queries are embedded under.
    """

    device: str = Field(default="auto", description="Where llama.cpp runs: auto, cpu or gpu.")
    threads: int | None = Field(default=None, description="CPU threads (None: all cores).")
    dim: int | None = Field(default=None, description="Matryoshka dimensions kept (None: all).")
    instruction: str = Field(default=DEFAULT_INSTRUCTION, description="The task description of queries.")
    _model: RetrievalEmbedder = PrivateAttr()

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 dim: int | None = None, instruction: str = DEFAULT_INSTRUCTION, embed_batch_size: int = BATCH_SIZE,
                 **kwargs):
        super().__init__(model_name=str(model), device=device, threads=threads, dim=dim, instruction=instruction,
                         embed_batch_size=embed_batch_size, **kwargs)
        self._model = RetrievalEmbedder(model, device=device, threads=threads, dim=dim, instruction=instruction)

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3Embedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._model.queries([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._model.documents([text])[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._model.documents(texts).tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class Qwen3Rerank(BaseNodePostprocessor):
    """Qwen3 reranking for LlamaIndex: keeps the `top_n` nodes (None: all) by P(yes), best first,
    the score in `NodeWithScore.score`.

    `model` is a GGUF path or a catalog name (as `-m`), loaded once; `instruction` is the task
    description the reranker judges relevance under.
    """

    model: str = Field(description="GGUF file or catalog name of the reranker.")
    top_n: int | None = Field(default=2, description="How many nodes to keep (None: all).")
    device: str = Field(default="auto", description="Where llama.cpp runs: auto, cpu or gpu.")
    threads: int | None = Field(default=None, description="CPU threads (None: all cores).")
    instruction: str = Field(default=DEFAULT_INSTRUCTION, description="The task description of the ranking.")
    _model: RetrievalReranker = PrivateAttr()

    def __init__(self, model: str | Path, *, top_n: int | None = 2, device: str = "auto", threads: int | None = None,
                 instruction: str = DEFAULT_INSTRUCTION, **kwargs):
        super().__init__(model=str(model), top_n=top_n, device=device, threads=threads, instruction=instruction,
                         **kwargs)
        self._model = RetrievalReranker(model, device=device, threads=threads, instruction=instruction)

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3Rerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise UserError("Qwen3Rerank needs the query: pass query_str or query_bundle")
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        ranked = self._model.rank(query_bundle.query_str, texts, self.top_n)
        return [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in ranked]
