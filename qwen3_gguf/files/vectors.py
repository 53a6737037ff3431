"""The search side of a collection: its vectors as memory-mapped float32 matrices beside the database.

The database stays the source of truth. The matrix file (`<db>.vectors`) is a copy of the chunk
vectors as they stood at one *generation* of the database — a counter that triggers in the
database raise on every insert or delete of a chunk. Chunk ids are never reused, so an id names
one vector for good. A small delta file (`<db>.vectors-delta`) extends the matrix file without
rewriting it: the rows added since and the ids deleted since, valid while the matrix file is the
one it was written against (its `base` generation). When the two are of the database's
generation a search scores them alone; when not (an index ran, or was killed, since) it reads
the database's chunk ids, scores the files' rows still in the database plus the rows added since
(read from the database). So a stale or missing file makes a search slower, never wrong;
`update` brings the files up to date.

Scoring is one float32 matrix-vector product (BLAS) over the memory-mapped rows. The top k are
then exact: every row whose float32 score is within the float32 rounding bound of the k-th best
is rescored in float64, and hits are ranked by that score, ties broken by chunk id — the same
order a float64 brute-force scan of the stored vectors gives.

File layout: a 128-byte header (magic, generation, rows, dim, the database's instance id, the
largest row norm, base generation, deleted count), the chunk ids (int64, ascending), the deleted
ids, zero padding to a 64-byte boundary, then the float32 rows.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

MAGIC = b"Q3GGVEC2"
HEADER = struct.Struct("<8sQQQ16sdQQ")   # magic, generation, rows, dim, instance, largest norm, base, deleted
HEADER_BYTES = 128
ALIGN = 64
COPY_ROWS = 16384                         # rows copied or fetched per step when a file is written
DELTA_MIN_ROWS = 4096                     # a delta file may hold this many changes, or 1/8 of the matrix file's
FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24

FetchVectors = Callable[[np.ndarray], np.ndarray]   # chunk ids → their float32 rows, in that order


def matrix_path(database: Path) -> Path:
    return database.with_name(database.name + ".vectors")


def delta_path(database: Path) -> Path:
    return database.with_name(database.name + ".vectors-delta")


@dataclass(frozen=True)
class Snapshot:
    """What the database held at one moment: its generation and its chunk ids (ascending)."""

    generation: int
    ids: np.ndarray


class VectorFile:
    """A memory-mapped matrix file, or None from `open` when it is missing, damaged or another database's."""

    def __init__(self, path: Path, generation: int, ids: np.ndarray, matrix: np.ndarray, max_norm: float,
                 base: int, deleted: np.ndarray):
        self.path = path
        self.generation = generation
        self.ids = ids
        self.matrix = matrix
        self.max_norm = max_norm
        self.base = base            # a delta file's: the generation of the matrix file it extends
        self.deleted = deleted      # a delta file's: ids of that matrix file deleted since

    @classmethod
    def open(cls, path: Path, instance: bytes) -> VectorFile | None:
        try:
            with open(path, "rb") as stream:
                magic, generation, rows, dim, owner, max_norm, base, n_deleted = \
                    HEADER.unpack(stream.read(HEADER.size))
            size = os.path.getsize(path)
        except (OSError, struct.error):
            return None
        matrix_offset = _matrix_offset(rows + n_deleted)
        if magic != MAGIC or owner != instance or dim == 0 or size != matrix_offset + rows * dim * 4:
            return None
        ids = _memmap(path, "<i8", HEADER_BYTES, (rows,))
        deleted = _memmap(path, "<i8", HEADER_BYTES + 8 * rows, (n_deleted,))
        matrix = _memmap(path, "<f4", matrix_offset, (rows, dim))
        return cls(path, generation, ids, matrix, max_norm, base, deleted)

    @staticmethod
    def write(path: Path, instance: bytes, generation: int, ids: np.ndarray, dim: int,
              sources: list[VectorFile | None], fetch: FetchVectors, *, base: int = 0,
              deleted: np.ndarray | None = None) -> None:
        """Write a file of the rows of `ids`: copied from `sources` where they hold them, else fetched."""
        deleted = np.empty(0, dtype=np.int64) if deleted is None else deleted
        rows, max_norm = len(ids), 0.0
        with atomic_path(path) as temporary, open(temporary, "wb") as stream:
            stream.write(b"\0" * HEADER_BYTES)
            stream.write(np.ascontiguousarray(ids, dtype="<i8").tobytes())
            stream.write(np.ascontiguousarray(deleted, dtype="<i8").tobytes())
            stream.write(b"\0" * (_matrix_offset(rows + len(deleted)) - HEADER_BYTES - 8 * (rows + len(deleted))))
            for block in _blocks(rows, COPY_ROWS):
                matrix = np.ascontiguousarray(_rows(ids[block], sources, fetch), dtype="<f4")
                max_norm = max(max_norm, float(np.linalg.norm(matrix, axis=1).max(initial=0.0)))
                stream.write(matrix.tobytes())
            stream.seek(0)
            stream.write(HEADER.pack(MAGIC, generation, rows, dim, instance, max_norm, base, len(deleted)))
            stream.flush()


@dataclass(frozen=True)
class Vectors:
    """The matrix file and the delta file that extends it (None when missing or written against another)."""

    main: VectorFile | None
    delta: VectorFile | None = None

    @classmethod
    def open(cls, database: Path, instance: bytes) -> Vectors:
        main = VectorFile.open(matrix_path(database), instance)
        delta = VectorFile.open(delta_path(database), instance) if main is not None else None
        return cls(main, delta if delta is not None and delta.base == main.generation else None)

    def is_current(self, generation: int, last_id: int) -> bool:
        """Whether the files hold exactly the chunks of the database at `generation` (whose largest id is given)."""
        newest = self.delta or self.main
        if newest is None or newest.generation != generation:
            return False
        last = max((int(f.ids[-1]) for f in (self.main, self.delta) if f is not None and len(f.ids)), default=-1)
        return last == last_id

    def update(self, database: Path, instance: bytes, snapshot: Snapshot, dim: int, fetch: FetchVectors) -> None:
        """Bring the files to `snapshot`: a delta file while the changes are few, else a new matrix file."""
        main = self.main
        if main is not None:
            added = np.setdiff1d(snapshot.ids, main.ids, assume_unique=True)
            deleted = np.setdiff1d(main.ids, snapshot.ids, assume_unique=True)
            if len(added) + len(deleted) <= max(DELTA_MIN_ROWS, len(main.ids) // 8):
                VectorFile.write(delta_path(database), instance, snapshot.generation, added, dim, [self.delta],
                                 fetch, base=main.generation, deleted=deleted)
                return
        VectorFile.write(matrix_path(database), instance, snapshot.generation, snapshot.ids, dim,
                         [main, self.delta], fetch)
        delta_path(database).unlink(missing_ok=True)   # written against the matrix file just replaced


@dataclass(frozen=True)
class Scored:
    ids: np.ndarray            # chunk ids, best first
    scores: np.ndarray         # their dot products with the query (float64)


def nearest(query: np.ndarray, n: int, vectors: Vectors, snapshot: Snapshot | None, fetch: FetchVectors,
            allowed: np.ndarray | None = None) -> Scored:
    """The n chunks whose vectors have the largest dot product with `query`: of `snapshot`, or of
    the files alone when they are current (`snapshot` None).

    `allowed` (chunk ids) restricts the search to those chunks.
    """
    query = np.ascontiguousarray(query, dtype=np.float32)
    parts = list(_current_parts(vectors) if snapshot is None else _snapshot_parts(vectors, snapshot, fetch))
    if not parts:
        return Scored(np.empty(0, dtype=np.int64), np.empty(0))
    ids = np.concatenate([part.ids for part in parts])
    scores = np.concatenate([part.score(query) for part in parts])
    if allowed is not None:
        scores[~np.isin(ids, allowed)] = -np.inf
    live = int(np.count_nonzero(scores > -np.inf))
    n = min(n, live)
    if n == 0:
        return Scored(np.empty(0, dtype=np.int64), np.empty(0))
    kth = np.partition(scores, len(scores) - n)[len(scores) - n]
    # A float32 dot product of d terms is within d·u·|q|·|x| of the true value; every row that could
    # belong to the top n by true value is rescored exactly.
    largest = max(part.max_norm for part in parts)
    slack = 2.01 * query.size * FLOAT32_UNIT_ROUNDOFF * float(np.linalg.norm(query)) * largest
    candidates = np.flatnonzero(scores >= kth - slack)
    exact = _exact_scores(candidates, parts, query)
    order = np.lexsort((ids[candidates], -exact))[:n]
    return Scored(ids[candidates][order], exact[order])


def exact_scores(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Dot products in float64, row by row: float32 products are exact in float64, and each row is
    summed the same way wherever it sits, so equal rows score equal and ties fall to the chunk id."""
    return (np.asarray(rows, dtype=np.float64) * np.asarray(query, dtype=np.float64)).sum(axis=1)


def brute_force(matrix: np.ndarray, ids: np.ndarray, query: np.ndarray, n: int) -> Scored:
    """The reference `nearest` is held to: every row scored by `exact_scores`, ties by id."""
    exact = exact_scores(matrix, np.asarray(query, dtype=np.float32))
    order = np.lexsort((ids, -exact))[:n]
    return Scored(ids[order], exact[order])


# --- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """Rows to score: all of a file's, all but the deleted ones (`keep`), or rows read from the database."""

    ids: np.ndarray
    matrix: np.ndarray
    max_norm: float
    keep: np.ndarray | None = None

    def score(self, query: np.ndarray) -> np.ndarray:
        scores = self.matrix @ query
        if self.keep is not None:
            scores[~self.keep] = -np.inf
        return scores


def _current_parts(vectors: Vectors) -> Iterator[_Part]:
    """The rows of current files: the matrix file's but those the delta file deleted, and the delta file's."""
    main, delta = vectors.main, vectors.delta
    if main is None:
        return
    keep = None
    if delta is not None and len(delta.deleted):
        keep = np.ones(len(main.ids), dtype=bool)
        keep[np.searchsorted(main.ids, delta.deleted)] = False
    yield _Part(np.asarray(main.ids), main.matrix, main.max_norm, keep)
    if delta is not None and len(delta.ids):
        yield _Part(np.asarray(delta.ids), delta.matrix, delta.max_norm)


def _snapshot_parts(vectors: Vectors, snapshot: Snapshot, fetch: FetchVectors) -> Iterator[_Part]:
    """Pieces that together hold exactly the snapshot's chunks: the files' rows still in it, and the rest fetched."""
    known = [np.empty(0, dtype=np.int64)]
    for file in (vectors.main, vectors.delta):
        if file is not None and len(file.ids):
            ids = np.asarray(file.ids)
            keep = None if np.array_equal(ids, snapshot.ids) else np.isin(ids, snapshot.ids, assume_unique=True)
            yield _Part(ids, file.matrix, file.max_norm, keep)
            known.append(ids)
    added = np.setdiff1d(snapshot.ids, np.concatenate(known), assume_unique=True)
    if len(added):
        matrix = np.asarray(fetch(added), dtype=np.float32)
        yield _Part(added, matrix, float(np.linalg.norm(matrix, axis=1).max()))


def _exact_scores(candidates: np.ndarray, parts, query: np.ndarray) -> np.ndarray:
    rows = []
    offset = 0
    for part in parts:
        mine = candidates[(candidates >= offset) & (candidates < offset + len(part.ids))] - offset
        rows.append(part.matrix[mine])
        offset += len(part.ids)
    return exact_scores(np.concatenate(rows), query)


def _rows(ids: np.ndarray, sources: list[VectorFile | None], fetch: FetchVectors) -> np.ndarray:
    """The rows of `ids` (ascending), from the first source file holding each, else fetched."""
    rows: np.ndarray | None = None
    missing = np.ones(len(ids), dtype=bool)
    for source in sources:
        if source is None or not len(source.ids) or not missing.any():
            continue
        position = np.searchsorted(source.ids, ids).clip(max=len(source.ids) - 1)
        present = missing & (np.asarray(source.ids)[position] == ids)
        if present.all():
            return source.matrix[position]
        if rows is None:
            rows = np.empty((len(ids), source.matrix.shape[1]), dtype=np.float32)
        rows[present] = source.matrix[position[present]]
        missing &= ~present
    if rows is None:
        return fetch(ids)
    if missing.any():
        rows[missing] = fetch(ids[missing])
    return rows


def _memmap(path: Path, dtype: str, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    if not shape[0]:
        return np.empty(shape if len(shape) > 1 else (0,), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _blocks(rows: int, size: int) -> Iterator[slice]:
    for start in range(0, rows, size):
        yield slice(start, min(start + size, rows))


def _matrix_offset(id_count: int) -> int:
    return -(-(HEADER_BYTES + 8 * id_count) // ALIGN) * ALIGN
