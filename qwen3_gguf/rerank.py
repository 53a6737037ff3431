"""Relevance scores from a Qwen3-Reranker GGUF: P("yes") that a document answers a query.

The converted reranker carries `cls.output.weight` (the lm_head rows of "yes" and "no") and
RANK pooling, so llama.cpp returns softmax([yes, no]) for the last token of each prompt;
element 0 is the score, the same number as the model card's exp(log_softmax([no, yes])[1]).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runtime
from .catalog import resolve_model
from .errors import UserError
from .gguf_file import read_model_file, require_kind
from .limits import MAX_INPUT_TOKENS, TruncationWarning
from .progress import progress_bar
from .prompts import DEFAULT_INSTRUCTION, RERANK_PREFIX, RERANK_SUFFIX, rerank_body
from .runtime.batching import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_SEQUENCES, PooledRunner


@dataclass(frozen=True)
class RankedDocument:
    index: int      # position in the documents given
    score: float    # P(yes)
    text: str


class Reranker:
    """Scores (query, document) pairs with a Qwen3-Reranker GGUF on llama.cpp.

    >>> reranker = Reranker("qwen3-reranker-0.6b-q8_0.gguf")
    >>> reranker.rank("what is GGUF?", ["a file format", "a fish"], top_k=1)
    """

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 max_tokens: int = MAX_INPUT_TOKENS, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 reuse_prefix: bool = True, verbose: bool = False):
        self.model_file = read_model_file(resolve_model(model, "reranker"))
        require_kind(self.model_file, "reranker")
        runtime.init_backend(verbose=verbose)
        self._llama = runtime.LlamaModel(self.model_file.path, gpu_layers=runtime.gpu_layers_for(device))
        if self._llama.n_cls_out != 2:
            raise UserError(f"{self.model_file.path} has {self._llama.n_cls_out} classifier outputs; "
                            "a Qwen3 reranker has two (yes, no)")
        self._prefix = self._llama.tokenize(RERANK_PREFIX, special=True)
        self._suffix = self._llama.tokenize(RERANK_SUFFIX, special=True)
        self.max_tokens = min(max_tokens, self._llama.n_ctx_train)
        self._body_budget = self.max_tokens - len(self._prefix) - len(self._suffix)
        if self._body_budget < 16:
            raise UserError(f"max_tokens {max_tokens} leaves no room for the query and document")
        self._runner = PooledRunner(
            self._llama, pooling=runtime.POOLING_RANK, threads=threads or runtime.default_threads(),
            batch_tokens=batch_tokens, max_sequences=DEFAULT_MAX_SEQUENCES, reuse_prefix=reuse_prefix,
        )

    @property
    def loaded_model(self) -> runtime.LlamaModel:
        """The llama.cpp model this reranker runs, for callers that run contexts of their own on it."""
        return self._llama

    @property
    def runner(self) -> PooledRunner:
        """The batching runner that scores the pairs."""
        return self._runner

    def tokenize(self, query: str, document: str, instruction: str = DEFAULT_INSTRUCTION) -> tuple[list[int], bool]:
        """The prompt ids for one pair and whether the body was cut to fit (the suffix never is)."""
        body = self._llama.tokenize(rerank_body(query, document, instruction), special=False)
        truncated = len(body) > self._body_budget
        return self._prefix + body[: self._body_budget] + self._suffix, truncated

    def prompt_length(self, query: str, document: str, instruction: str = DEFAULT_INSTRUCTION) -> int:
        """How many tokens the pair's prompt has before any truncation."""
        body = self._llama.tokenize(rerank_body(query, document, instruction), special=False)
        return len(self._prefix) + len(body) + len(self._suffix)

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
              truncate: bool = True, show_progress: bool = False) -> np.ndarray:
        """P(yes) for each document, in the order given."""
        if not isinstance(query, str) or not query:
            raise UserError("the query is empty; there is nothing to rank against")
        if isinstance(documents, str):
            raise UserError("documents must be a list of strings, not one string")
        if instruction is not None and not instruction.strip():
            raise UserError("the instruction is empty")
        instruction = instruction or DEFAULT_INSTRUCTION
        sequences, n_truncated = [], 0
        for i, document in enumerate(documents):
            if not isinstance(document, str):
                raise UserError(f"document #{i} is a {type(document).__name__}, not a string")
            if not document:
                raise UserError(f"document #{i} is empty; there is nothing to score")
            ids, truncated = self.tokenize(query, document, instruction)
            if truncated and not truncate:
                raise UserError(f"document #{i} makes a prompt of {self.prompt_length(query, document, instruction)} "
                                f"tokens, over this model's limit of {self.max_tokens} (truncation is off)")
            n_truncated += truncated
            sequences.append(ids)
        if n_truncated:
            warnings.warn(
                f"{n_truncated} of {len(sequences)} query-document prompts were longer than "
                f"{self.max_tokens} tokens; their documents were cut to fit",
                TruncationWarning, stacklevel=2,
            )
        with progress_bar(total=len(sequences), enabled=show_progress, unit="doc") as bar:
            # The system prompt, instruction and query are decoded once, not once per document.
            shared = self._prefix + self._llama.tokenize(rerank_body(query, "", instruction), special=False)
            probabilities = self._runner.run(sequences, shared_prefix=shared, progress=bar)
        return probabilities[:, 0].copy()

    def rank(self, query: str, documents: Sequence[str], *, top_k: int | None = None,
             instruction: str | None = None, show_progress: bool = False) -> list[RankedDocument]:
        """Documents sorted by score, best first; `top_k` keeps only the best k."""
        if top_k is not None and top_k < 1:
            raise UserError(f"top_k must be at least 1, got {top_k}")
        scores = self.score(query, documents, instruction=instruction, show_progress=show_progress)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [RankedDocument(index=int(i), score=float(scores[i]), text=documents[i]) for i in order]

    def close(self) -> None:
        self._runner.close()
        self._llama.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
