"""Search a LanceDB output of the Ray engine the way `Collection` searches the SQLite store.

    collection = LanceCollection("vectors.lance")           # the model recorded in the table
    for hit in collection.search("how do I quantize?", k=5):
        print(hit.path, hit.chunk, hit.score)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files.store import DEFAULT_RERANK_TOP, SearchHit
from ..prompts import DEFAULT_INSTRUCTION
from .sinks import LANCE_SCHEME, lance_metadata, open_lance_table


class LanceCollection:
    """The `chunks` table of a LanceDB database written by `embed-files --engine ray --format lance`.

    `model` defaults to the one recorded in the table; another one must have the same name,
    quant and size. Queries are embedded with `instruction` (the retrieval default).
    """

    def __init__(self, path: str | Path, *, model: str | Path | None = None, embedder=None,
                 instruction: str | None = None, device: str = "auto", threads: int | None = None,
                 verbose: bool = False):
        self.path = Path(str(path).removeprefix(LANCE_SCHEME))
        self.table = open_lance_table(self.path)
        if self.table is None:
            raise UserError(f"no LanceDB table at {LANCE_SCHEME}{self.path}; write one with: "
                            f"qwen3-gguf embed-files PATH... --engine ray -o {LANCE_SCHEME}{self.path}")
        self.metadata = lance_metadata(self.table)
        if "dim" not in self.metadata:
            raise UserError(f"{LANCE_SCHEME}{self.path} was not written by qwen3-gguf (no model recorded)")
        self.dim = int(self.metadata["dim"])
        self.instruction = instruction or DEFAULT_INSTRUCTION
        self._model = model or self.metadata["model_spec"]
        self._embedder = embedder
        self._embedder_options = dict(device=device, threads=threads, verbose=verbose)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __len__(self) -> int:
        return self.table.count_rows()

    @property
    def embedder(self):
        """The query model, loaded on first use and checked against the table's."""
        if self._embedder is None:
            from ..embed import Embedder

            self._embedder = Embedder(self._model, **self._embedder_options)
        model_file = self._embedder.model_file
        found = (model_file.name, model_file.file_type, str(model_file.embedding_length))
        recorded = (self.metadata["model_name"], self.metadata["quant"], self.metadata["embedding_length"])
        if found != recorded:
            raise UserError(f"{LANCE_SCHEME}{self.path} holds vectors of {recorded[0]} ({recorded[1]}, "
                            f"{recorded[2]} dimensions); the model given is {found[0]} ({found[1]}, {found[2]})")
        return self._embedder

    def search(self, query: str | None = None, *, vector=None, k: int = 10, use_instruction: bool = True,
               instruction: str | None = None, reranker=None, rerank_top: int = DEFAULT_RERANK_TOP,
               path_glob: str | None = None, min_score: float | None = None) -> list[SearchHit]:
        """The k chunks closest to `query` (embedded here) or to `vector`, best first, by cosine;
        with `reranker`, the best k of the closest `rerank_top` by its score. `path_glob` and
        `min_score` filter as `Collection.search` does."""
        if (query is None) == (vector is None):
            raise UserError("give a query or a vector, not both")
        if k < 1 or rerank_top < 1:
            raise UserError("k and rerank_top must be at least 1")
        if not len(self):
            raise UserError(f"{LANCE_SCHEME}{self.path} is empty")
        if vector is None:
            task = (instruction or self.instruction) if use_instruction else None
            vector = self.embedder.encode(query, instruction=task, dim=self.dim)
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise UserError(f"the vector has {vector.shape[0]} dimensions; the table holds {self.dim}")
        n = max(k, rerank_top) if reranker is not None else k
        nearest = self.table.search(vector).distance_type("cosine").limit(n)
        if path_glob:
            nearest = nearest.where(_glob_as_like(path_glob), prefilter=True)
        rows = nearest.select(["path", "chunk", "start", "end", "text", "_distance"]).to_arrow().to_pylist()
        hits = [SearchHit(r["path"], r["chunk"], r["start"], r["end"], r["text"],
                          1.0 - r["_distance"], 1.0 - r["_distance"]) for r in rows]
        if reranker is not None:
            if query is None:
                raise UserError("reranking needs the query text, not only its vector")
            scores = reranker.score(query, [h.text for h in hits], instruction=task)
            hits = [replace(hits[i], score=float(scores[i])) for i in np.argsort(-scores, kind="stable")[:k]]
        return [hit for hit in hits if min_score is None or hit.score >= min_score]


def _glob_as_like(pattern: str) -> str:
    """A path glob (`*`, `?`; one not starting with / or * matches at any depth) as an SQL LIKE filter."""
    if "[" in pattern:
        raise UserError(f"--path-glob {pattern!r}: character classes ([...]) are not supported on LanceDB tables")
    if not pattern.startswith(("/", "*")):
        pattern = "*/" + pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("'", "''")
    return f"path LIKE '{escaped.replace('*', '%').replace('?', '_')}' ESCAPE '\\'"
