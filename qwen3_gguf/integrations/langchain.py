"""LangChain: `Qwen3Embeddings` (an `Embeddings`) and `Qwen3Reranker` (a `BaseDocumentCompressor`, for
`ContextualCompressionRetriever`). Needs `pip install 'qwen3-gguf[langchain]'`.

    embeddings = Qwen3Embeddings(model="qwen3-embedding-0.6b")
    store = InMemoryVectorStore.from_texts(texts, embeddings)     # documents: no instruction
    store.similarity_search("what is GGUF?")                      # the query: with the instruction
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from ..prompts import DEFAULT_INSTRUCTION
from .shared import RetrievalEmbedder, RetrievalReranker, missing_extra

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from pydantic import PrivateAttr
except ModuleNotFoundError as error:
    raise missing_extra("langchain", error) from None


class Qwen3Embeddings(Embeddings):
    """Qwen3 embeddings for LangChain: `embed_documents` without an instruction, `embed_query` with it.

    `model` is a GGUF path or a catalog name (as `-m`), loaded once; `dim` keeps the first `dim`
    Matryoshka dimensions; `instruction` is the task description queries are embedded under.
    """

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 dim: int | None = None, instruction: str = DEFAULT_INSTRUCTION):
        self._model = RetrievalEmbedder(model, device=device, threads=threads, dim=dim, instruction=instruction)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._model.documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._model.queries([text])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)


class Qwen3Reranker(BaseDocumentCompressor):
    """Qwen3 reranking for LangChain: keeps the `top_n` documents (None: all) by P(yes), best first,
    each with its score in `metadata["relevance_score"]`.

    `model` is a GGUF path or a catalog name (as `-m`), loaded once; `instruction` is the task
    description the reranker judges relevance under.
    """

    model: str | Path
    top_n: int | None = 3
    device: str = "auto"
    threads: int | None = None
    instruction: str = DEFAULT_INSTRUCTION
    _reranker: RetrievalReranker = PrivateAttr()

    def model_post_init(self, context: object) -> None:
        self._reranker = RetrievalReranker(self.model, device=self.device, threads=self.threads,
                                           instruction=self.instruction)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        ranked = self._reranker.rank(query, [d.page_content for d in documents], self.top_n)
        return [Document(id=documents[r.index].id, page_content=documents[r.index].page_content,
                         metadata={**documents[r.index].metadata, "relevance_score": r.score}) for r in ranked]
