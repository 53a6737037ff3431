"""A collection of embedded files in one SQLite database: incremental indexing and search.

    collection = Collection("vectors.db", model="qwen3-embedding-0.6b")
    collection.index(["docs"])                      # embeds new and changed files only
    for hit in collection.search("how do I quantize?", k=5):     # hybrid: keywords and vectors fused
        print(hit.id, hit.score)
    print(collection.get(hit.id)[0].text)

The database is the source of truth. Tables: `documents` (path, mtime, size, content hash),
`chunks` (text, character offsets, float32 vector), `chunks_words` and `chunks_fts` (the keyword
indexes over the chunk text, by word and by trigram, see `keywords.py`), `collection` (the model,
quant, dim and query instruction the vectors were made with; a different model or dim is refused)
and `generation` (a counter that triggers raise on every change to `chunks`). Its schema version
is PRAGMA user_version; older versions are migrated when a collection is opened.

Each search mode is one short path: keyword (`keywords.best_matches`, BM25), vector
(`vectors.nearest`, exact cosine) and hybrid (both, fused by `fusion.fuse`), then the reranker
when one is given.

Searching reads the vectors from a memory-mapped matrix file beside the database (see
`vectors.py`), kept in step through the generation counter: a missing or stale file costs time,
never correctness.

Writes: each batch of documents is one transaction, so an interrupted run keeps every finished
batch and the next run goes on. One process writes at a time: a second `index` waits for the
first (an advisory lock on `<db>.lock`) and then finds its files already done. The database is in
WAL mode, so searches read the last committed state while an index runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..catalog import cached_path, default_embedding_model, is_model_path, lookup
from ..errors import UserError
from ..gguf_file import file_sha256
from ..limits import check_dim
from ..prompts import DEFAULT_INSTRUCTION
from .chunking import Chunker
from .embedding import EmbeddedBatch, embed_documents
from .fusion import DEFAULT_FUSION, Fusion, fuse
from .keywords import BUILD_KEYWORD_INDEX, BUILD_WORD_INDEX, KEYWORD_INDEX, WORD_INDEX, best_matches
from .vectors import Scored, Snapshot, Vectors, delta_path, exact_scores, matrix_path, nearest
from .walk import DEFAULT_CHUNK_TOKENS, Counts, TextFiles

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE collection (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    mtime REAL NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    chunk INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
"""
# Added by version 1 (and so part of a new collection too). Chunk ids are never reused
# (AUTOINCREMENT), so an id names one vector forever and the matrix file can be brought up to date
# by ids alone.
GENERATION = """
CREATE UNIQUE INDEX chunks_by_document ON chunks(document_id, chunk);
CREATE TABLE generation (value INTEGER NOT NULL);
INSERT INTO generation VALUES (0);
CREATE TRIGGER chunk_added AFTER INSERT ON chunks BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER chunk_removed AFTER DELETE ON chunks BEGIN UPDATE generation SET value = value + 1; END;
"""
BUSY_TIMEOUT_S = 60         # a reader or writer waits this long for another's commit
IMPORT_BATCH_RECORDS = 2048  # records committed per transaction by `add` (whole files: a few more)
FETCH_IDS = 10_000          # chunk ids per SELECT when vectors are read from the database
DEFAULT_RERANK_TOP = 50
SEARCH_MODES = ("hybrid", "vector", "keyword")
HYBRID_DEPTH = 50           # candidates taken from each ranking before they are fused
SHARED_CONNECTIONS = sqlite3.threadsafety == 3   # SQLite built serialized: threads may share a connection


@dataclass(frozen=True)
class SearchHit:
    path: str
    chunk: int
    start: int
    end: int
    text: str
    score: float            # what the hits are ordered by: P(yes) when reranked, else the mode's score
    cosine: float | None    # with the query's vector (not computed in keyword mode)
    bm25: float | None = None           # BM25 score when the keyword ranking holds the chunk
    keyword_rank: int | None = None     # rank (from 1) in the keyword ranking
    vector_rank: int | None = None      # rank (from 1) in the vector ranking
    fused: float | None = None          # the reciprocal rank fusion score (hybrid mode)

    @property
    def id(self) -> str:
        """The chunk's name in the collection, as `Collection.get` takes it: PATH#CHUNK."""
        return f"{self.path}#{self.chunk}"


@dataclass(frozen=True)
class Passage:
    """Stored text: one chunk (`chunk` its number) or a whole file (`chunk` None), with character offsets."""

    path: str
    chunk: int | None
    start: int
    end: int
    text: str


@dataclass
class IndexReport:
    counts: Counts = field(default_factory=Counts)   # files read, chunks and tokens embedded, skips
    embedded: int = 0       # new or changed files embedded
    unchanged: int = 0
    pruned: int = 0         # files gone from disk (with prune=True) or now empty or binary


@dataclass
class AddReport:
    documents: int = 0      # documents written (new, or replaced by the imported chunks)
    chunks: int = 0
    verified: int = 0       # documents whose file on disk still holds the imported text


class Collection:
    """Embedded files in an SQLite database, searchable by meaning.

    `model` is a GGUF path or catalog name; for an existing collection it defaults to the one
    the collection was built with. Pass `embedder` to use an Embedder you already have.
    `on_wait` is told (one line) when another process is writing and this one waits for it.
    """

    def __init__(self, path: str | Path, *, model: str | Path | None = None, embedder=None,
                 dim: int | None = None, instruction: str | None = None, create: bool = True,
                 device: str = "auto", threads: int | None = None, verbose: bool = False,
                 on_wait: Callable[[str], None] | None = None):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UserError(f"no collection at {self.path}; build one with: qwen3-gguf index PATH... --db {self.path}")
        self._created = not self.path.exists()  # a new file is removed again if indexing fails
        self._on_wait = on_wait
        self._vectors = Vectors(None)
        self._vectors_key: tuple | None = None
        try:
            # Shared with the thread that ranks keywords during a hybrid search, where SQLite serializes
            # the calls on one connection (threadsafety 3); elsewhere hybrid ranks one after the other.
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=not SHARED_CONNECTIONS)
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
        self._hashes: dict[Path, str] = {}   # GGUF path → sha256, for imported records that carry one

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
        with self._writing():
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
                report.pruned += self._forget(self._missing_files())
            self._update_vectors()
        return report

    def prune(self) -> int:
        """Forget documents whose files no longer exist; returns how many."""
        with self._writing():
            pruned = self._forget(self._missing_files())
            self._update_vectors()
        return pruned

    def add(self, records: Iterable[Mapping], *, model: str | None = None,
            written_at: float | None = None) -> AddReport:
        """Store chunks embedded elsewhere: dicts with path, chunk, start, end, vector, and text and model
        when known, and `model_spec` (the path or catalog name the scale-out job was given) when
        known, and `model_sha256` (the GGUF's hash) when known (as `embed-files` and `read_records`
        give them).

        Chunks of a path replace what the collection held for it. Without `text`, the chunk's text
        is read from the file (`text[start:end]`). Records name their model in `model`, or the
        `model` argument does; a model or dim other than the collection's is refused. A document
        whose file on disk still holds the imported text counts as indexed (`index` skips it);
        others are re-embedded if `index` is later given their path. Records without text can
        only be checked by time: a file modified after `written_at` (when the records were
        written) does not count as indexed. Vectors are stored normalized to unit length.
        Records whose `model_sha256` is not the hash of the model given or recorded (when its GGUF
        is at hand) are refused, naming both models.
        """
        report = AddReport()
        with self._writing():
            written: dict[str, int] = {}  # path → document id, for paths met again later in `records`
            accepted: set[tuple] = set()  # (model, dim) pairs checked already
            batch: list[dict] = []
            for record in records:
                specs = tuple(str(s) for s in (record.get("model_spec"), record.get("model") or model) if s)
                made_by = (specs, len(record["vector"]), record.get("model_sha256"))
                if made_by not in accepted:
                    self._adopt_record_model(*made_by)
                    accepted.add(made_by)
                if len(batch) >= IMPORT_BATCH_RECORDS and record["path"] != batch[-1]["path"]:
                    self._store_records(batch, written, written_at, report)   # a file's chunks commit together
                    batch = []
                batch.append(record)
            if batch:
                self._store_records(batch, written, written_at, report)
            if report.chunks:
                self._update_vectors()
        return report

    def _missing_files(self) -> list[str]:
        return [path for (path,) in self._db.execute("SELECT path FROM documents") if not os.path.isfile(path)]

    def _forget(self, paths: Sequence[str]) -> int:
        """Delete the documents stored under `paths` and their chunks; returns how many there were."""
        gone = [row for path in paths for row in self._db.execute("SELECT id FROM documents WHERE path = ?", (path,))]
        if gone:
            with self._transaction():
                self._db.executemany("DELETE FROM chunks WHERE document_id = ?", gone)
                self._db.executemany("DELETE FROM documents WHERE id = ?", gone)
        return len(gone)

    def _stored_hash(self, path: str) -> str | None:
        row = self._db.execute("SELECT sha256 FROM documents WHERE path = ?", (os.path.abspath(path),)).fetchone()
        return row[0] if row else None

    def _store(self, batch: EmbeddedBatch) -> None:
        """Replace the batch's documents and their chunks in one transaction."""
        with self._transaction():
            ids = {document.path: self._replace_document(os.path.abspath(document.path), document.mtime,
                                                         document.size, document.sha256)
                   for document in batch.documents}
            self._db.executemany(
                "INSERT INTO chunks (document_id, chunk, char_start, char_end, text, vector) VALUES (?, ?, ?, ?, ?, ?)",
                [(ids[c.path], c.index, c.start, c.end, c.text, np.asarray(v, dtype="<f4").tobytes())
                 for c, v in zip(batch.chunks, batch.vectors)],
            )

    def _replace_document(self, path: str, mtime: float, size: int, sha256: str) -> int:
        old = self._db.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
        if old:
            self._db.execute("DELETE FROM chunks WHERE document_id = ?", old)
            self._db.execute("DELETE FROM documents WHERE id = ?", old)
        return self._db.execute("INSERT INTO documents (path, mtime, size, sha256) VALUES (?, ?, ?, ?)",
                                (path, mtime, size, sha256)).lastrowid

    def _store_records(self, batch: list[dict], written: dict[str, int], written_at: float | None,
                       report: AddReport) -> None:
        by_path: dict[str, list[dict]] = {}
        for record in batch:
            by_path.setdefault(os.path.abspath(record["path"]), []).append(record)
        rows = []
        with self._transaction():
            for path, records in by_path.items():
                texts, fingerprint = _texts_of(path, records, written_at)
                if path not in written:
                    written[path] = self._replace_document(path, *fingerprint)
                    report.documents += 1
                    report.verified += bool(fingerprint[2])
                elif not fingerprint[2]:
                    self._db.execute("UPDATE documents SET sha256 = '' WHERE id = ?", (written[path],))
                for record, text in zip(records, texts):
                    vector = np.asarray(record["vector"], dtype=np.float32)
                    norm = float(np.linalg.norm(vector))
                    if norm == 0:
                        raise UserError(f"the vector of {path}#{record['chunk']} is all zeros")
                    rows.append((written[path], record["chunk"], record["start"], record["end"], text,
                                 (vector / norm).astype("<f4").tobytes()))
            try:
                self._db.executemany("INSERT INTO chunks (document_id, chunk, char_start, char_end, text, vector) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError:
                raise UserError("the records hold the same chunk of a file twice") from None
        report.chunks += len(rows)

    # --- searching -------------------------------------------------------------------------------

    def search(self, query: str | None = None, *, vector=None, k: int = 10, mode: str | None = None,
               fusion: Fusion = DEFAULT_FUSION, use_instruction: bool = True, instruction: str | None = None,
               reranker=None, rerank_top: int = DEFAULT_RERANK_TOP, path_glob: str | None = None,
               min_score: float | None = None) -> list[SearchHit]:
        """The k best chunks for `query`, best first, by `mode`:

        - "hybrid" (the default for a query text): the keyword and vector rankings fused by
          reciprocal rank (`fusion` sets its constant and weights); `score` is the fused score;
        - "vector" (the default for a `vector`): by cosine, exact (float64-rescored top k);
        - "keyword": by BM25 over the chunk text (no model is loaded); `score` is the BM25 score.

        With `reranker`, the best `rerank_top` of the mode's ranking are scored by it and the best
        k of those kept (`score` is then P(yes)). The query is embedded with the collection's
        instruction (or `instruction`), or as plain text with `use_instruction=False`; a ready
        `vector` (normalized here) is used instead when given, alone or with the query text.

        `path_glob` keeps chunks of files whose absolute path matches it (a pattern not starting
        with / or * may match at any folder depth); `min_score` drops hits scoring below it.
        """
        mode = mode or ("vector" if query is None else "hybrid")
        if mode not in SEARCH_MODES:
            raise UserError(f"unknown search mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
        if k < 1 or rerank_top < 1:
            raise UserError("k and rerank_top must be at least 1")
        if query is None and vector is None:
            raise UserError("search takes a query text or a vector (or both)")
        if query is not None and not query.strip():
            raise UserError("the query is empty")
        if query is None and (reranker is not None or mode != "vector"):
            raise UserError(f"{'reranking' if reranker is not None else mode + ' search'} needs the query text, "
                            "not only its vector")
        if self._db.execute("SELECT NOT EXISTS (SELECT 1 FROM chunks)").fetchone()[0]:
            raise UserError(f"the collection {self.path} is empty; index some files first")
        if mode != "keyword":
            if vector is None:
                instruction = (instruction or self.instruction) if use_instruction else None
                vector = self.embedder.encode(query, instruction=instruction, dim=self.dim)
            vector = self._query_vector(vector)
            self._refresh_vectors_if_free()
        n = max(k, rerank_top) if reranker is not None else k
        pattern = _path_pattern(path_glob) if path_glob else None
        with self._read_transaction():
            if mode == "keyword":
                hits = self._keyword_hits(query, n, pattern)
            elif mode == "vector":
                hits = self._vector_hits(self._vector_scan(pattern)(vector, n))
            else:
                hits = self._hybrid_hits(query, vector, n, pattern, fusion)
        if reranker is not None and hits:
            scores = reranker.score(query, [h.text for h in hits], instruction=instruction)
            order = np.argsort(-scores, kind="stable")[:k]
            hits = [replace(hits[i], score=float(scores[i])) for i in order]
        return [hit for hit in hits if min_score is None or hit.score >= min_score]

    def _keyword_hits(self, query: str, n: int, pattern: str | None) -> list[SearchHit]:
        ranked = best_matches(self._db, query, n, pattern)
        return [self._hit(chunk_id, score=bm25, bm25=bm25, keyword_rank=rank)
                for rank, (chunk_id, bm25) in enumerate(zip(ranked.ids.tolist(), ranked.scores.tolist()), 1)]

    def _vector_hits(self, scored: Scored) -> list[SearchHit]:
        return [self._hit(chunk_id, score=cosine, cosine=cosine, vector_rank=rank)
                for rank, (chunk_id, cosine) in enumerate(zip(scored.ids.tolist(), scored.scores.tolist()), 1)]

    def _hybrid_hits(self, query: str, vector: np.ndarray, n: int, pattern: str | None,
                     fusion: Fusion) -> list[SearchHit]:
        depth = max(n, HYBRID_DEPTH)
        # The two rankings are made at once, in one read transaction: the vector scan runs in numpy and
        # the keyword ranking in SQLite, both without the GIL, so on two cores hybrid costs about the
        # slower of the two rather than their sum. The scan reads what it needs from SQLite before the
        # keyword ranking starts: SQLite runs one call at a time on a connection, so a read after it
        # started would wait for the whole ranking.
        scan = self._vector_scan(pattern)
        if SHARED_CONNECTIONS:
            with ThreadPoolExecutor(max_workers=1) as keyword_thread:
                ranking = keyword_thread.submit(best_matches, self._db, query, depth, pattern)
                nearest_ = scan(vector, depth)
                keyword = ranking.result()
        else:
            keyword, nearest_ = best_matches(self._db, query, depth, pattern), scan(vector, depth)
        scored = keyword.scores > 0     # chunks holding only weightless terms tie at 0: no ranking to fuse
        keyword = replace(keyword, ids=keyword.ids[scored], scores=keyword.scores[scored])
        fused = fuse(keyword.ids, nearest_.ids, fusion)
        ids = fused.ids[:n]
        bm25 = dict(zip(keyword.ids.tolist(), keyword.scores.tolist()))
        cosines = exact_scores(self._fetch_vectors(ids), vector).tolist() if len(ids) else []
        return [self._hit(chunk_id, score=score, cosine=cosine, bm25=bm25.get(chunk_id),
                          keyword_rank=keyword_rank or None, vector_rank=vector_rank or None, fused=score)
                for chunk_id, score, cosine, keyword_rank, vector_rank in
                zip(ids.tolist(), fused.scores.tolist(), cosines, fused.keyword_ranks.tolist(),
                    fused.vector_ranks.tolist())]

    def _vector_scan(self, pattern: str | None) -> Callable[[np.ndarray, int], Scored]:
        """`scan(vector, n)`: the exact n nearest chunks of the caller's read transaction. What the scan
        needs from SQLite is read here; the scan itself is numpy (it reads SQLite again only for
        chunks the vector files do not hold yet)."""
        vectors, snapshot = self._vectors_and_snapshot()
        allowed = self._chunks_under(pattern) if pattern else None
        return functools.partial(nearest, vectors=vectors, snapshot=snapshot, fetch=self._fetch_vectors,
                                 allowed=allowed)

    def _query_vector(self, vector) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self.dim is not None and len(vector) != self.dim:
            raise UserError(f"the query vector has {len(vector)} dimensions; {self.path} holds {self.dim}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise UserError("the query vector must be finite and not all zeros")
        return vector / norm

    def _chunks_under(self, pattern: str) -> np.ndarray:
        ids = self._db.execute("SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id "
                               "WHERE d.path GLOB ?", (pattern,))
        return np.fromiter((row[0] for row in ids), dtype=np.int64)

    def _hit(self, chunk_id: int, **scores) -> SearchHit:
        path, chunk, start, end, text = self._db.execute(
            "SELECT d.path, c.chunk, c.char_start, c.char_end, c.text FROM chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE c.id = ?", (chunk_id,)).fetchone()
        return SearchHit(path, chunk, start, end, text, **{"cosine": None, **scores})

    # --- reading stored text ---------------------------------------------------------------------

    def get(self, name: str) -> list[Passage]:
        """Stored text by name: a file's path (its whole text, rebuilt from its chunks), a chunk as
        search hits name it (`PATH#CHUNK`), or a glob of paths (every matching file, by path).
        Relative paths are taken from the current folder, as `index` took them."""
        with self._read_transaction():
            path = os.path.abspath(name)
            if self._document_id(path) is not None:
                return [self._file_passage(path)]
            file, _, number = name.rpartition("#")
            if file and number.isdigit():
                row = self._db.execute(
                    "SELECT c.chunk, c.char_start, c.char_end, c.text FROM chunks c JOIN documents d "
                    "ON d.id = c.document_id WHERE d.path = ? AND c.chunk = ?",
                    (os.path.abspath(file), int(number))).fetchone()
                if row is not None:
                    return [Passage(os.path.abspath(file), *row)]
            if any(char in name for char in "*?["):
                paths = [p for (p,) in self._db.execute("SELECT path FROM documents WHERE path GLOB ? ORDER BY path",
                                                        (_path_pattern(name),))]
                if paths:
                    return [self._file_passage(p) for p in paths]
        raise UserError(f"{name} is not in the collection {self.path}")

    def _document_id(self, path: str) -> int | None:
        row = self._db.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def _file_passage(self, path: str) -> Passage:
        """A file's text from its chunks, which follow one another (overlapping, never leaving a gap)."""
        chunks = self._db.execute("SELECT c.char_start, c.char_end, c.text FROM chunks c JOIN documents d "
                                  "ON d.id = c.document_id WHERE d.path = ? ORDER BY c.chunk", (path,)).fetchall()
        if not chunks:
            return Passage(path, None, 0, 0, "")
        text, covered = "", chunks[0][0]
        for start, end, chunk_text in chunks:
            text += chunk_text[max(0, covered - start):]
            covered = max(covered, end)
        return Passage(path, None, chunks[0][0], covered, text)

    # --- the vector file -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read_transaction(self):
        """One read snapshot of the database for the block (WAL: writers go on meanwhile)."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _vectors_and_snapshot(self) -> tuple[Vectors, Snapshot | None]:
        """The vector files, and the database's chunk ids unless the files are current (inside a read transaction)."""
        vectors, generation, current = self._vectors_state()
        if current:
            return vectors, None
        # Read through the (document, chunk) index: a few bytes a chunk, where the table holds text and vector.
        rows = self._db.execute("SELECT id FROM chunks INDEXED BY chunks_by_document")
        return vectors, Snapshot(generation, np.sort(np.fromiter((row[0] for row in rows), dtype=np.int64)))

    def _vectors_state(self) -> tuple[Vectors, int, bool]:
        """The vector files, the database's generation, and whether the files are of it."""
        generation, last_id = self._db.execute(
            "SELECT (SELECT value FROM generation), (SELECT coalesce(max(id), -1) FROM chunks)").fetchone()
        vectors = self._open_vectors()
        return vectors, generation, vectors.is_current(generation, last_id)

    def _open_vectors(self) -> Vectors:
        """The vector files, opened again when either was replaced since they were last opened."""
        key = tuple(_file_key(path) for path in (matrix_path(self.path), delta_path(self.path)))
        if key != self._vectors_key:
            self._vectors = Vectors.open(self.path, self._instance)
            self._vectors_key = key
        return self._vectors

    def _fetch_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of chunk `ids`, in that order (inside the caller's transaction)."""
        rows = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(ids), FETCH_IDS):
            part = ids[start:start + FETCH_IDS].tolist()
            found = dict(self._db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(part))})",
                                          part))
            rows[start:start + len(part)] = np.frombuffer(b"".join(found[i] for i in part),
                                                          dtype="<f4").reshape(len(part), -1)
        return rows

    def _update_vectors(self) -> None:
        """Bring the vector files to the database's current state (the caller holds the writer lock)."""
        if self.dim is None:
            return
        try:
            with self._read_transaction():
                vectors, snapshot = self._vectors_and_snapshot()
                if snapshot is not None:
                    vectors.update(self.path, self._instance, snapshot, self.dim, self._fetch_vectors)
        except OSError as exc:
            raise UserError(f"cannot write {matrix_path(self.path)}: {exc.strerror or exc}; the database is "
                            "complete, and search reads its vectors from it until the file can be written") from None

    def _refresh_vectors_if_free(self) -> None:
        """Before a search: update stale or missing vector files, unless a writer is busy (then the
        search reads the difference from the database) or the folder is read-only."""
        if self.dim is None:
            return
        with self._read_transaction():
            current = self._vectors_state()[2]
        if not current:
            with contextlib.suppress(UserError, OSError), self._writing(wait=False) as free:
                if free:
                    self._update_vectors()

    # --- writing safely --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the collection's writer lock for the block (yields False without `wait` when it is taken)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise UserError(f"cannot write {self.path}: the file is read-only")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UserError(f"cannot write {self.path}: {exc.strerror} ({lock_path})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                if self._on_wait is not None:
                    self._on_wait(f"another process is writing {self.path}; waiting for it to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
            self.metadata = dict(self._db.execute("SELECT key, value FROM collection"))  # as the last writer left it
            self._check_settings(self._dim, self._instruction)
            yield True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction; a failure rolls it back whole and a failed write is a UserError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise UserError(f"cannot write {self.path}: {exc}; the change was rolled back") from None

    # --- schema ----------------------------------------------------------------------------------

    def _open_schema(self) -> dict[str, str]:
        version = self._schema_version()
        if version is None or version < SCHEMA_VERSION:
            if version is not None and not os.access(self.path, os.W_OK):
                raise UserError(f"{self.path} is a collection of an older qwen3-gguf and read-only; "
                                "make it writable once so that it can be upgraded")
            with self._transaction():   # another process may have created or upgraded it meanwhile
                self._upgrade(self._schema_version())
        with contextlib.suppress(sqlite3.OperationalError):  # a read-only database keeps its journal mode
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")      # in WAL mode: durable across process crashes
        return dict(self._db.execute("SELECT key, value FROM collection"))

    def _schema_version(self) -> int | None:
        """The collection's schema version; None for a new, empty database."""
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "collection" not in tables:
            raise UserError(f"{self.path} is an SQLite database but not a qwen3-gguf collection")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(f"{self.path} was written by a newer qwen3-gguf (collection schema {version}; "
                            f"this one reads up to {SCHEMA_VERSION}); upgrade qwen3-gguf")
        return version if tables else None

    def _upgrade(self, version: int | None) -> None:
        """Create the schema (version None) or migrate it to SCHEMA_VERSION (inside the caller's transaction)."""
        steps = [SCHEMA, GENERATION, KEYWORD_INDEX, WORD_INDEX] if version is None else MIGRATIONS[version:]
        for step in steps:
            for statement in _statements(step):
                self._db.execute(statement)
        self._db.execute("INSERT OR IGNORE INTO collection (key, value) VALUES ('instance', ?)",
                         (secrets.token_hex(16),))
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def _instance(self) -> bytes:
        """Names this database in its matrix file, so that a file next to another database is never used."""
        return bytes.fromhex(self.metadata["instance"])

    # --- the collection's model ------------------------------------------------------------------

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
        identity = _identity(model_file)
        if "model_name" in self.metadata:
            recorded = {key: self.metadata[key] for key in identity}
            if recorded != identity:
                raise UserError(
                    f"{self.path} was built with {_describe(recorded)}; the model given is {_describe(identity)}. "
                    "Use the same model, or a new --db"
                )
            return
        dim = self._dim or self.dim or model_file.embedding_length
        check_dim(dim, model_file.embedding_length)
        named = not self._embedder_given and not is_model_path(self._model_spec())
        model = str(self._model_spec()) if named else str(model_file.path.resolve())
        recorded = self.metadata.get("model")   # by imported records, which may name a file not at hand here
        if recorded is not None and "model_sha256" in self.metadata:
            self._same_model_file(str(model_file.path), "the model given is", recorded, self.metadata["model_sha256"])
        self._record(identity, model=recorded if recorded is not None and _model_file(recorded) else model,
                     dim=str(dim), instruction=self._instruction or self.instruction)

    def _adopt_record_model(self, specs: tuple[str, ...], dim: int, sha256: str | None) -> None:
        """Accept imported vectors of `dim` made by the model that `specs` name (any of them; none: unnamed)
        whose GGUF hashes to `sha256` (when known), or refuse them."""
        if self.dim is not None and dim != self.dim:
            raise UserError(f"{self.path} holds {self.dim}-dimensional vectors; the records' have {dim}")
        if sha256:
            made_by = specs[-1] if specs else "an unnamed model"
            if self._model:
                self._same_model_file(str(self._model), "the model given is", made_by, sha256)
            if "model" in self.metadata and self._same_model_file(self.metadata["model"], f"{self.path} holds vectors "
                                                                  "of", made_by, sha256):
                return      # the hash settles it: the records are of the collection's model
        if "model" in self.metadata:
            recorded = self._recorded_identity()
            if specs and not any(self._names_the_model(spec) or (recorded and _identity_of(spec) == recorded)
                                 for spec in specs):
                raise UserError(f"{self.path} holds vectors of {self.metadata['model']}; the records are of "
                                f"{specs[-1]}. Import them into a new --db")
            return
        if self._model:
            specs = (str(self._model), *specs)
        if not specs:
            raise UserError("the records do not say which model made them; name it with -m "
                            "(the GGUF file or catalog name they were embedded with)")
        identities = [(_identity_of(spec), spec) for spec in specs]
        identity, spec = next(((i, s) for i, s in identities if i), (None, specs[0]))
        if identity and is_model_path(spec):
            spec = str(Path(spec).resolve())   # found from here; to be found from anywhere later
        if identity:
            check_dim(dim, int(identity["embedding_length"]))
        self._record(identity or {}, {"model_sha256": sha256} if sha256 else {}, model=spec, dim=str(dim),
                     instruction=self._instruction or self.instruction)

    def _same_model_file(self, ours: str, whose: str, record_model: str, sha256: str) -> bool:
        """Whether the GGUF of the model `ours` hashes to `sha256` (False when it is not at hand); a UserError
        naming both models when it hashes to something else."""
        path = _model_file(ours)
        if path is None:
            return False
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        if self._hashes[path] != sha256:
            raise UserError(f"the records were embedded with {record_model} (GGUF sha256 {sha256[:12]}…); "
                            f"{whose} {ours} (sha256 "
                            f"{self._hashes[path][:12]}…). Import them with their own model, into a new --db")
        return True

    def _names_the_model(self, spec: str) -> bool:
        """Whether `spec` is the collection's model as recorded, its GGUF name, or the scale-out job's
        key for it (`NAME-QUANT-HASH`, see distributed/identity.py)."""
        spec = spec.lower()
        if spec in (self.metadata["model"].lower(), self.metadata.get("model_name", "").lower()):
            return True
        if "model_name" not in self.metadata:
            return False
        name = re.sub(r"[^a-z0-9._-]+", "-", self.metadata["model_name"].lower()).strip("-") or "model"
        return re.fullmatch(rf"{re.escape(name)}-{re.escape(self.metadata['quant'].lower())}-[0-9a-f]{{12}}",
                            spec) is not None

    def _recorded_identity(self) -> dict[str, str] | None:
        return {key: self.metadata[key] for key in ("model_name", "quant", "embedding_length")} \
            if "model_name" in self.metadata else None

    def _record(self, *updates: Mapping[str, str], **values: str) -> None:
        for update in updates:
            self.metadata.update(update)
        self.metadata.update(values)
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO collection (key, value) VALUES (?, ?)", self.metadata.items())

    def close(self) -> None:
        self._vectors = Vectors(None)
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        failed_empty = False
        with contextlib.suppress(sqlite3.Error):
            failed_empty = exc_type is not None and self._created and self.document_count == 0
        self.close()
        if failed_empty:
            for suffix in ("", "-wal", "-shm", ".vectors", ".vectors-delta", ".lock"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)


# Migrations: MIGRATIONS[v] brings a database from schema version v to v + 1.
# Version 0 is the schema of the first release (no user_version, chunk ids could be reused);
# version 1 had no keyword index; version 2 had the trigram index only.
MIGRATIONS = [
    """
    CREATE TABLE chunks_v1 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        document_id INTEGER NOT NULL REFERENCES documents(id),
        chunk INTEGER NOT NULL,
        char_start INTEGER NOT NULL,
        char_end INTEGER NOT NULL,
        text TEXT NOT NULL,
        vector BLOB NOT NULL
    );
    INSERT INTO chunks_v1 SELECT id, document_id, chunk, char_start, char_end, text, vector FROM chunks;
    DROP TABLE chunks;
    ALTER TABLE chunks_v1 RENAME TO chunks;
    """ + GENERATION,
    KEYWORD_INDEX + BUILD_KEYWORD_INDEX,
    WORD_INDEX + BUILD_WORD_INDEX,
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def _path_pattern(glob: str) -> str:
    """A path glob as an SQLite GLOB over absolute paths: one not starting with / or * matches at any depth."""
    return glob if glob.startswith(("/", "*")) else "*/" + glob


def _statements(script: str) -> list[str]:
    """The statements of a schema script (triggers hold inner semicolons: split on complete statements)."""
    statements, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


def _texts_of(path: str, records: list[dict], written_at: float | None) -> tuple[list[str], tuple[float, int, str]]:
    """The records' chunk texts, and (mtime, size, sha256) of the file when it holds them ('' when not)."""
    document = None
    if os.path.isfile(path):
        document = next(iter(TextFiles([path])), None)
    texts = []
    for record in records:
        text = record.get("text")
        if text is None:
            if document is None:
                raise UserError(f"the record for {path}#{record['chunk']} has no text and the file cannot be read")
            text = document.text[record["start"]:record["end"]]
        texts.append(text)
    holds = document is not None and all(document.text[r["start"]:r["end"]] == t for r, t in zip(records, texts))
    if any("text" not in r for r in records):
        holds = holds and written_at is not None and document.mtime <= written_at
    return texts, (document.mtime, document.size, document.sha256) if holds else (0.0, 0, "")


def _identity(model_file) -> dict[str, str]:
    return {"model_name": model_file.name, "quant": model_file.file_type,
            "embedding_length": str(model_file.embedding_length)}


def _model_file(spec: str | Path) -> Path | None:
    """The GGUF of a model named by path or catalog name, when it is at hand."""
    try:
        path = Path(spec) if is_model_path(spec) else cached_path(lookup(str(spec), "embedding"))
    except UserError:
        return None
    return path.resolve() if path is not None and path.is_file() else None


def _identity_of(spec: str | Path) -> dict[str, str] | None:
    """The identity of a model named by path or catalog name, when its GGUF is at hand."""
    path = _model_file(spec)
    if path is None:
        return None
    from ..gguf_file import read_model_file

    try:
        return _identity(read_model_file(path))
    except (UserError, OSError):
        return None


def _file_key(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _describe(identity: dict[str, str]) -> str:
    return f"{identity['model_name']} ({identity['quant']}, {identity['embedding_length']} dimensions)"
