"""What the framework classes share: the model opened as `-m` opens it, documents plain and queries
instructed, one call at a time on each model, and the message of a missing extra."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..builds import build_if_needed
from ..embed import Embedder
from ..errors import UserError
from ..limits import check_dim
from ..prompts import DEFAULT_INSTRUCTION
from ..rerank import RankedDocument, Reranker


class MissingExtra(ImportError, UserError):
    """A framework module was imported without the framework installed."""


def missing_extra(extra: str, error: ModuleNotFoundError) -> MissingExtra:
    """The error for `qwen3_gguf.integrations.<extra>` when its framework (the package of `error.name`) is
    not installed."""
    package = (error.name or "its framework").partition(".")[0]
    return MissingExtra(f"qwen3_gguf.integrations.{extra} needs {package}, which is not installed: "
                        f"pip install 'qwen3-gguf[{extra}]'")


def _check_instruction(instruction: str) -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise UserError("the instruction is empty")
    return instruction


class RetrievalEmbedder:
    """An `Embedder` as retrieval frameworks call it: documents as they are, queries with the instruction,
    at one Matryoshka `dim`. Calls from several threads (a framework's async methods) take turns."""

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 dim: int | None = None, instruction: str = DEFAULT_INSTRUCTION):
        self.instruction = _check_instruction(instruction)
        build_if_needed(model, "embedding")
        self.embedder = Embedder(model, device=device, threads=threads)
        check_dim(dim, self.embedder.dimension)
        self.dim = dim
        self.dimension = dim or self.embedder.dimension
        self._lock = threading.Lock()

    def documents(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, embedded without an instruction."""
        return self._encode(texts, None)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, embedded as a query under the instruction."""
        return self._encode(texts, self.instruction)

    def _encode(self, texts: Sequence[str], instruction: str | None) -> np.ndarray:
        if isinstance(texts, str):
            raise UserError("texts must be a list of strings, not one string")
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        with self._lock:
            return self.embedder.encode(texts, instruction=instruction, dim=self.dim)


class RetrievalReranker:
    """A `Reranker` as retrieval frameworks call it: documents ranked for a query under one instruction.
    Calls from several threads take turns."""

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 instruction: str = DEFAULT_INSTRUCTION):
        self.instruction = _check_instruction(instruction)
        build_if_needed(model, "reranker")
        self.reranker = Reranker(model, device=device, threads=threads)
        self._lock = threading.Lock()

    def rank(self, query: str, texts: Sequence[str], top_n: int | None) -> list[RankedDocument]:
        """The texts by P(yes), best first; `top_n` keeps the best n (None: all)."""
        texts = list(texts)
        if not texts:
            return []
        with self._lock:
            return self.reranker.rank(query, texts, top_k=top_n, instruction=self.instruction)
