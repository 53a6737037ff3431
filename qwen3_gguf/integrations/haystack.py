"""Haystack 2: `Qwen3DocumentEmbedder`, `Qwen3TextEmbedder` (queries) and `Qwen3Ranker` components. Needs
`pip install 'qwen3-gguf[haystack]'`.

    store.write_documents(Qwen3DocumentEmbedder(model=gguf).run(documents)["documents"])
    pipeline.add_component("query", Qwen3TextEmbedder(model=gguf))   # the query: with the instruction
    pipeline.add_component("retriever", InMemoryEmbeddingRetriever(store))
    pipeline.add_component("ranker", Qwen3Ranker(model=reranker_gguf, top_k=3))

As Haystack's own local-model components do, each loads its model in `warm_up()` (a pipeline calls
it; `run` calls it when nobody did), once; the constructor only records the settings, which
`to_dict` serializes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..prompts import DEFAULT_INSTRUCTION
from .shared import RetrievalEmbedder, RetrievalReranker, missing_extra

try:
    from haystack import Document, component
except ModuleNotFoundError as error:
    raise missing_extra("haystack", error) from None


class _EmbedderComponent:
    """The settings and the model, loaded on first use, of both embedder components."""

    instruction = DEFAULT_INSTRUCTION  # what queries are embedded under; the text embedder takes its own

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None, dim: int | None = None):
        self.model = str(model)
        self.device = device
        self.threads = threads
        self.dim = dim
        self._embedder: RetrievalEmbedder | None = None

    def warm_up(self) -> None:
        if self._embedder is None:
            self._embedder = RetrievalEmbedder(self.model, device=self.device, threads=self.threads, dim=self.dim,
                                               instruction=self.instruction)

    @property
    def embedder(self) -> RetrievalEmbedder:
        self.warm_up()
        return self._embedder

    def _meta(self) -> dict[str, Any]:
        return {"model": self.model}


@component
class Qwen3DocumentEmbedder(_EmbedderComponent):
    """Embeds Haystack documents' content without an instruction, into `Document.embedding`.

    `model` is a GGUF path or a catalog name (as `-m`); `dim` keeps the first `dim` Matryoshka
    dimensions.
    """

    @component.output_types(documents=list[Document], meta=dict[str, Any])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        vectors = self.embedder.documents([d.content or "" for d in documents])
        return {"documents": [replace(d, embedding=v.tolist()) for d, v in zip(documents, vectors)],
                "meta": self._meta()}


@component
class Qwen3TextEmbedder(_EmbedderComponent):
    """Embeds one query text under the instruction (the input of an embedding retriever).

    `model` is a GGUF path or a catalog name (as `-m`); `dim` keeps the first `dim` Matryoshka
    dimensions; `instruction` is the task description the query is embedded under.
    """

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 dim: int | None = None, instruction: str = DEFAULT_INSTRUCTION):
        # @component remakes the class, which zero-argument super() cannot follow.
        _EmbedderComponent.__init__(self, model, device=device, threads=threads, dim=dim)
        self.instruction = instruction

    @component.output_types(embedding=list[float], meta=dict[str, Any])
    def run(self, text: str) -> dict[str, Any]:
        return {"embedding": self.embedder.queries([text])[0].tolist(), "meta": self._meta()}


@component
class Qwen3Ranker:
    """Ranks documents for a query by P(yes), best first, the score in `Document.score`; keeps `top_k`
    (None: all).

    `model` is a GGUF path or a catalog name (as `-m`); `instruction` is the task description the
    reranker judges relevance under.
    """

    def __init__(self, model: str | Path, *, top_k: int | None = 10, device: str = "auto",
                 threads: int | None = None, instruction: str = DEFAULT_INSTRUCTION):
        self.model = str(model)
        self.top_k = top_k
        self.device = device
        self.threads = threads
        self.instruction = instruction
        self._reranker: RetrievalReranker | None = None

    def warm_up(self) -> None:
        if self._reranker is None:
            self._reranker = RetrievalReranker(self.model, device=self.device, threads=self.threads,
                                               instruction=self.instruction)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, Any]:
        self.warm_up()
        ranked = self._reranker.rank(query, [d.content or "" for d in documents],
                                     self.top_k if top_k is None else top_k)
        return {"documents": [replace(documents[r.index], score=r.score) for r in ranked]}
