"""The evaluation set of `qwen3-gguf sweep`, and one model's outputs and speed on it."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..data import eval_file
from ..errors import UserError
from ..prompts import DEFAULT_INSTRUCTION, query_text
from .text_records import TextRecord, read_text_records

RERANK_CANDIDATES = 5  # each query against its own document and the next pairs' documents


@dataclass(frozen=True)
class EvalSet:
    """Queries, documents, and which document each query was written for (if any)."""

    name: str
    queries: list[TextRecord]        # records with a query (and maybe its document)
    documents: list[str]             # every record's document, in file order
    answers: list[int | None]        # for each query, the index of its own document

    def fingerprint(self) -> str:
        """A short hash of the texts, which names the outputs measured on them."""
        texts = [[q.query, q.instruction] for q in self.queries] + [self.documents, self.answers]
        return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()[:16]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(query index, document index) of the queries written for a document."""
        return [(q, d) for q, d in enumerate(self.answers) if d is not None]

    def rerank_candidates(self) -> list[list[int]]:
        """For each query with a document: its own and the next RERANK_CANDIDATES-1 pairs'
        documents (wrapping around), own document first."""
        pairs = self.pairs
        n = min(RERANK_CANDIDATES, len(pairs))
        return [[pairs[(i + j) % len(pairs)][1] for j in range(n)] for i in range(len(pairs))]


def load_eval_set(path: str | Path | None = None, *, limit: int | None = None) -> EvalSet:
    """The records of `path` (the shipped set when None), the first `limit` of them if given."""
    if limit is not None and limit < 2:
        raise UserError(f"--limit must be at least 2, got {limit}")
    if path is None:
        records, name = read_text_records(eval_file(), "evaluation file"), f"qwen3-gguf:{eval_file().name}"
    else:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"evaluation file not found: {path}")
        records, name = read_text_records(path, "evaluation file"), str(path)
    records = records[:limit]
    queries, documents, answers = [], [], []
    for record in records:
        if record.document is not None:
            documents.append(record.document)
        if record.query is not None:
            queries.append(record)
            answers.append(len(documents) - 1 if record.document is not None else None)
    if not queries or not documents:
        raise UserError(f"the evaluation set {name} needs queries and documents "
                        f"(it has {len(queries)} queries and {len(documents)} documents)")
    return EvalSet(name=name, queries=queries, documents=documents, answers=answers)


@dataclass(frozen=True)
class ModelOutputs:
    """What one model file produced on the evaluation set, and how fast."""

    outputs: dict[str, np.ndarray]   # embedding: "queries", "documents" (raw rows); reranker: "scores"
    load_s: float                    # open the file and produce a first output
    tokens: int                      # tokens the model saw for the whole set
    seconds: float                   # time to process them
    document_tokens: int = 0         # of which an embedding model's documents (the rest are queries)
    document_seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def split_tokens_per_s(self) -> dict[str, float]:
        """An embedding model's documents and queries tokens/s apart (empty for a reranker)."""
        if not self.document_tokens:
            return {}
        return {"documents_tokens_per_s": self.document_tokens / self.document_seconds,
                "queries_tokens_per_s": (self.tokens - self.document_tokens) / (self.seconds - self.document_seconds)}

    def save(self, path: Path) -> None:
        """Store as .npz (written under a temporary name, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial, partial.open("wb") as file:
            np.savez(file, load_s=self.load_s, tokens=self.tokens, seconds=self.seconds,
                     document_tokens=self.document_tokens, document_seconds=self.document_seconds,
                     **{f"output_{name}": values for name, values in self.outputs.items()})

    @classmethod
    def load(cls, path: Path) -> ModelOutputs:
        with np.load(path) as stored:
            return cls(outputs={key.removeprefix("output_"): stored[key] for key in stored.files
                                if key.startswith("output_")},
                       load_s=float(stored["load_s"]), tokens=int(stored["tokens"]), seconds=float(stored["seconds"]),
                       **({"document_tokens": int(stored["document_tokens"]),
                           "document_seconds": float(stored["document_seconds"])}
                          if "document_tokens" in stored.files else {}))


def run_model(path: Path, kind: str, evalset: EvalSet, *, max_tokens: int, threads: int | None) -> ModelOutputs:
    """Run the evaluation set through `path` as the runtime does for users."""
    from ..embed import Embedder
    from ..limits import TruncationWarning
    from ..rerank import Reranker

    started = time.perf_counter()
    runtime_class = Embedder if kind == "embedding" else Reranker
    with runtime_class(path, device="cpu", threads=threads, max_tokens=max_tokens) as runtime, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # long documents are cut alike for every file
        run = _run_embedder if kind == "embedding" else _run_reranker
        return run(runtime, evalset, started)


def check_rerank_pairs(evalset: EvalSet) -> None:
    """A reranker is measured on query/document pairs; refuse a set without any."""
    if not evalset.pairs:
        raise UserError(f"a reranker is evaluated on query/document pairs; {evalset.name} has none "
                        "(use JSONL records with both 'query' and 'document')")


def _run_embedder(embedder, evalset: EvalSet, started: float) -> ModelOutputs:
    embedder.encode("a first text")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    documents = embedder.encode(evalset.documents, normalize=False)
    document_seconds = time.perf_counter() - started
    outputs = {"documents": documents, "queries": _embed_queries(embedder, evalset.queries)}
    seconds = time.perf_counter() - started
    document_tokens = sum(len(embedder.tokenize(d)[0]) for d in evalset.documents)
    tokens = document_tokens + sum(
        len(embedder.tokenize(query_text(q.query, q.instruction or DEFAULT_INSTRUCTION))[0]) for q in evalset.queries)
    return ModelOutputs(outputs=outputs, load_s=load_s, tokens=tokens, seconds=seconds,
                        document_tokens=document_tokens, document_seconds=document_seconds)


def _run_reranker(reranker, evalset: EvalSet, started: float) -> ModelOutputs:
    """P(yes) of each query with its rerank candidates (its own document first)."""
    check_rerank_pairs(evalset)
    reranker.score("a first query", ["a first document"])
    load_s = time.perf_counter() - started
    work = [(evalset.queries[q], [evalset.documents[d] for d in docs])
            for (q, _), docs in zip(evalset.pairs, evalset.rerank_candidates())]
    started = time.perf_counter()
    scores = [reranker.score(q.query, docs, instruction=q.instruction or DEFAULT_INSTRUCTION) for q, docs in work]
    seconds = time.perf_counter() - started
    tokens = sum(len(reranker.tokenize(q.query, doc, q.instruction or DEFAULT_INSTRUCTION)[0])
                 for q, docs in work for doc in docs)
    return ModelOutputs(outputs={"scores": np.array(scores, dtype=np.float64)}, load_s=load_s, tokens=tokens,
                        seconds=seconds)


def _embed_queries(embedder, queries: list[TextRecord]) -> np.ndarray:
    """Query vectors in order, each under its own instruction (the default one if none)."""
    out = np.empty((len(queries), embedder.dimension), dtype=np.float32)
    by_instruction: dict[str, list[int]] = {}
    for i, record in enumerate(queries):
        by_instruction.setdefault(record.instruction or DEFAULT_INSTRUCTION, []).append(i)
    for instruction, rows in by_instruction.items():
        out[rows] = embedder.encode([queries[i].query for i in rows], instruction=instruction, normalize=False)
    return out
