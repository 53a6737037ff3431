"""A collection of embedded files in one SQLite database: incremental indexing and search.

    collection = Collection("vectors.db", model="qwen3-embedding-0.6b")
    collection.index(["docs"])                      # embeds new and changed files only
    for hit in collection.search("how do I quantize?", k=5):
        print(hit.path, hit.chunk, hit.score)

Tables: `documents` (path, mtime, size, content hash), `chunks` (text, character offsets,
float32 vector), and `collection` (the model, quant, dim and query instruction the vectors were
made with; a different model or dim is refused). Each batch of documents is committed as one
transaction, so an interrupted run keeps every finished batch and the next run goes on.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..catalog import default_embedding_model, is_model_path
from ..errors import UserError
from ..limits import check_dim
from ..prompts import DEFAULT_INSTRUCTION
from .chunking import Chunker
from .embedding import EmbeddedBatch, embed_documents
from .walk import DEFAULT_CHUNK_TOKENS, Counts, TextFiles

SCHEMA = """
CREATE TABLE IF NOT EXISTS collection (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    mtime REAL NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    chunk INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);
"""
SCORE_BLOCK_ROWS = 8192     # vectors scored per numpy product during search
DEFAULT_RERANK_TOP = 50


@dataclass(frozen=True)
class SearchHit:
    path: str
    chunk: int
    start: int
    end: int
    text: str
    score: float            # the reranker's P(yes) when reranked, else the cosine
    cosine: float


@dataclass
class IndexReport:
    counts: Counts = field(default_factory=Counts)   # files read, chunks and tokens embedded, skips
    embedded: int = 0       # new or changed files embedded
    unchanged: int = 0
    pruned: int = 0         # files gone from disk (with prune=True) or now empty or binary


class Collection:
    """Embedded files in an SQLite database, searchable by meaning.

    `model` is a GGUF path or catalog name; for an existing collection it defaults to the one
    the collection was built with. Pass `embedder` to use an Embedder you already have.
    """

    def __init__(self, path: str | Path, *, model: str | Path | None = None, embedder=None,
                 dim: int | None = None, instruction: str | None = None, create: bool = True,
                 device: str = "auto", threads: int | None = None, verbose: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UserError(f"no collection at {self.path}; build one with: qwen3-gguf index PATH... --db {self.path}")
        self._created = not self.path.exists()  # a new file is removed again if indexing fails
        try:
            self._db = sqlite3.connect(self.path)
            self.metadata = self._open_schema()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable SQLite database: {exc}") from None
        self._check_settings(dim, instruction)
        self._model = model
        self._embedder = embedder
        self._embedder_given = embedder is not None
        self._embedder_options = dict(device=device, threads=threads, verbose=verbose)
        self._dim = dim
        self._instruction = instruction

    # --- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of chunks stored."""
        return self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    @property
    def document_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM documents").fetchone()[0]

    @property
    def dim(self) -> int | None:
        return int(self.metadata["dim"]) if "dim" in self.metadata else None

    @property
    def instruction(self) -> str:
        return self.metadata.get("instruction", DEFAULT_INSTRUCTION)

    @property
    def embedder(self):
        """The embedding model, loaded on first use and checked against the collection."""
        if self._embedder is None:
            from ..embed import Embedder

            self._embedder = Embedder(self._model_spec(), **self._embedder_options)
        self._adopt_model()
        return self._embedder

    # --- indexing --------------------------------------------------------------------------------

    def index(self, paths: Sequence[str], *, include: Sequence[str] = (), exclude: Sequence[str] = (),
              chunk_tokens: int = DEFAULT_CHUNK_TOKENS, overlap: int | None = None, prune: bool = False,
              on_batch: Callable[[EmbeddedBatch, IndexReport], None] | None = None) -> IndexReport:
        """Embed new and changed files under `paths`; with `prune`, forget files that are gone."""
        if "-" in paths:
            raise UserError("the index tracks files by path; stdin (-) cannot be indexed")
        report = IndexReport()
        files = TextFiles(paths, include=include, exclude=exclude, counts=report.counts)
        embedder = self.embedder
        chunker = Chunker(embedder, chunk_tokens, overlap)

        def changed():
            for document in files:
                if self._stored_hash(document.path) == document.sha256:
                    report.unchanged += 1
                else:
                    yield document

        for batch in embed_documents(embedder, changed(), chunker, dim=self.dim, counts=report.counts):
            self._store(batch)
            report.embedded += len(batch.documents)
            if on_batch is not None:
                on_batch(batch, report)
        report.pruned = self._forget([os.path.abspath(p) for p in files.no_text])
        if prune:
            report.pruned += self.prune()
        return report

    def prune(self) -> int:
        """Forget documents whose files no longer exist; returns how many."""
        return self._forget([path for (path,) in self._db.execute("SELECT path FROM documents")
                             if not os.path.isfile(path)])

    def _forget(self, paths: Sequence[str]) -> int:
        """Delete the documents stored under `paths` and their chunks; returns how many there were."""
        gone = [row for path in paths for row in self._db.execute("SELECT id FROM documents WHERE path = ?", (path,))]
        with self._db:
            self._db.executemany("DELETE FROM chunks WHERE document_id = ?", gone)
            self._db.executemany("DELETE FROM documents WHERE id = ?", gone)
        return len(gone)

    def _stored_hash(self, path: str) -> str | None:
        row = self._db.execute("SELECT sha256 FROM documents WHERE path = ?", (os.path.abspath(path),)).fetchone()
        return row[0] if row else None

    def _store(self, batch: EmbeddedBatch) -> None:
        """Replace the batch's documents and their chunks in one transaction."""
        with self._db:
            ids = {}
            for document in batch.documents:
                path = os.path.abspath(document.path)
                old = self._db.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
                if old:
                    self._db.execute("DELETE FROM chunks WHERE document_id = ?", old)
                    self._db.execute("DELETE FROM documents WHERE id = ?", old)
                ids[document.path] = self._db.execute(
                    "INSERT INTO documents (path, mtime, size, sha256) VALUES (?, ?, ?, ?)",
                    (path, document.mtime, document.size, document.sha256),
                ).lastrowid
            self._db.executemany(
                "INSERT INTO chunks (document_id, chunk, char_start, char_end, text, vector) VALUES (?, ?, ?, ?, ?, ?)",
                [(ids[c.path], c.index, c.start, c.end, c.text, np.asarray(v, dtype="<f4").tobytes())
                 for c, v in zip(batch.chunks, batch.vectors)],
            )

    # --- searching -------------------------------------------------------------------------------

    def search(self, query: str, *, k: int = 10, use_instruction: bool = True, instruction: str | None = None,
               reranker=None, rerank_top: int = DEFAULT_RERANK_TOP) -> list[SearchHit]:
        """The k chunks closest to `query` by cosine, or the best k of the closest `rerank_top`
        as scored by `reranker`. The query is embedded with the collection's instruction (or
        `instruction`), or as plain text with `use_instruction=False`."""
        if k < 1 or rerank_top < 1:
            raise UserError("k and rerank_top must be at least 1")
        if not len(self):
            raise UserError(f"the collection {self.path} is empty; index some files first")
        instruction = (instruction or self.instruction) if use_instruction else None
        vector = self.embedder.encode(query, instruction=instruction, dim=self.dim)
        n_candidates = max(k, rerank_top) if reranker is not None else k
        candidates = self._nearest(vector, n_candidates)
        hits = [self._hit(chunk_id, cosine) for chunk_id, cosine in candidates]
        if reranker is None:
            return hits
        scores = reranker.score(query, [h.text for h in hits], instruction=instruction)
        order = np.argsort(-scores, kind="stable")[:k]
        return [replace(hits[i], score=float(scores[i])) for i in order]

    def _nearest(self, query: np.ndarray, n: int) -> list[tuple[int, float]]:
        """(chunk id, cosine) of the n stored vectors closest to `query`, best first."""
        best_ids = np.empty(0, dtype=np.int64)
        best_scores = np.empty(0, dtype=np.float32)
        cursor = self._db.execute("SELECT id, vector FROM chunks")
        while rows := cursor.fetchmany(SCORE_BLOCK_ROWS):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
            best_ids = np.concatenate([best_ids, ids])
            best_scores = np.concatenate([best_scores, vectors @ query])
            if len(best_ids) > n:
                keep = np.argpartition(-best_scores, n)[:n]
                best_ids, best_scores = best_ids[keep], best_scores[keep]
        order = np.argsort(-best_scores, kind="stable")
        return [(int(best_ids[i]), float(best_scores[i])) for i in order]

    def _hit(self, chunk_id: int, cosine: float) -> SearchHit:
        path, chunk, start, end, text = self._db.execute(
            "SELECT d.path, c.chunk, c.char_start, c.char_end, c.text FROM chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE c.id = ?", (chunk_id,)).fetchone()
        return SearchHit(path, chunk, start, end, text, cosine, cosine)

    # --- the collection's model ------------------------------------------------------------------

    def _open_schema(self) -> dict[str, str]:
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "collection" not in tables:
            raise UserError(f"{self.path} is an SQLite database but not a qwen3-gguf collection")
        with self._db:
            self._db.executescript(SCHEMA)
        return dict(self._db.execute("SELECT key, value FROM collection"))

    def _check_settings(self, dim: int | None, instruction: str | None) -> None:
        if dim is not None and self.dim is not None and dim != self.dim:
            raise UserError(f"{self.path} holds {self.dim}-dimensional vectors; --dim {dim} does not match")
        if instruction is not None and "instruction" in self.metadata and instruction != self.instruction:
            raise UserError(f"{self.path} was built with the query instruction {self.instruction!r}; "
                            "give that one or none")

    def _model_spec(self) -> str | Path:
        """The model asked for, else the collection's, else the catalog's default."""
        return self._model or self.metadata.get("model") or default_embedding_model()

    def _adopt_model(self) -> None:
        """Record the model of a new collection, or refuse one that differs from the recorded one."""
        model_file = self._embedder.model_file
        identity = {"model_name": model_file.name, "quant": model_file.file_type,
                    "embedding_length": str(model_file.embedding_length)}
        if "model_name" in self.metadata:
            recorded = {key: self.metadata[key] for key in identity}
            if recorded != identity:
                raise UserError(
                    f"{self.path} was built with {_describe(recorded)}; the model given is {_describe(identity)}. "
                    "Use the same model, or a new --db"
                )
            return
        dim = self._dim or model_file.embedding_length
        check_dim(dim, model_file.embedding_length)
        named = not self._embedder_given and not is_model_path(self._model_spec())
        model = str(self._model_spec()) if named else str(model_file.path.resolve())
        self.metadata.update(identity, model=model, dim=str(dim), instruction=self._instruction or DEFAULT_INSTRUCTION)
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO collection (key, value) VALUES (?, ?)", self.metadata.items())

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        failed_empty = exc_type is not None and self._created and self.document_count == 0
        self.close()
        if failed_empty:
            self.path.unlink(missing_ok=True)


def _describe(identity: dict[str, str]) -> str:
    return f"{identity['model_name']} ({identity['quant']}, {identity['embedding_length']} dimensions)"
