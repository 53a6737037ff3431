"""The search side of a collection: its vectors as one memory-mapped float32 matrix beside the database.

The database stays the source of truth. The matrix file (`<db>.vectors`) is a copy of the chunk
vectors as they stood at one *generation* of the database — a counter that triggers in the
database raise on every insert or delete of a chunk. Chunk ids are never reused, so an id names
one vector for good. A search reads the database's chunk ids in one snapshot (or takes the file's
when the file is of the database's generation): it scores the rows the file has that are still
in the database, plus the rows added since the file was written, read from the database. So a
stale or missing file makes a search slower, never wrong; `VectorFile.write` brings it up to date.

Scoring is one float32 matrix-vector product (BLAS) over the memory-mapped rows. The top k are
then exact: every row whose float32 score is within the float32 rounding bound of the k-th best
is rescored in float64, and hits are ranked by that score, ties broken by chunk id — the same
order a float64 brute-force scan of the stored vectors gives.

File layout: a 64-byte header (magic, generation, rows, dim, the database's instance id, the
largest row norm), the
chunk ids (int64, ascending), zero padding to a 64-byte boundary, then the float32 rows.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

MAGIC = b"Q3GGVEC1"
HEADER = struct.Struct("<8sQQQ16sd")       # magic, generation, rows, dim, instance (16 bytes), largest row norm
HEADER_BYTES = 64
ALIGN = 64
COPY_ROWS = 16384                           # rows copied or fetched per step when a file is written
FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24

FetchVectors = Callable[[np.ndarray], np.ndarray]   # chunk ids → their float32 rows, in that order


def matrix_path(database: Path) -> Path:
    return database.with_name(database.name + ".vectors")


@dataclass(frozen=True)
class Snapshot:
    """What the database held at one moment: its generation and its chunk ids (ascending)."""

    generation: int
    ids: np.ndarray


class VectorFile:
    """A memory-mapped matrix file, or None from `open` when it is missing, damaged or another database's."""

    def __init__(self, path: Path, generation: int, ids: np.ndarray, matrix: np.ndarray, max_norm: float):
        self.path = path
        self.generation = generation
        self.ids = ids
        self.matrix = matrix
        self.max_norm = max_norm

    @classmethod
    def open(cls, path: Path, instance: bytes) -> VectorFile | None:
        try:
            with open(path, "rb") as stream:
                magic, generation, rows, dim, owner, max_norm = HEADER.unpack(stream.read(HEADER.size))
            size = os.path.getsize(path)
        except (OSError, struct.error):
            return None
        matrix_offset = _matrix_offset(rows)
        if magic != MAGIC or owner != instance or dim == 0 or size != matrix_offset + rows * dim * 4:
            return None
        ids = np.memmap(path, dtype="<i8", mode="r", offset=HEADER_BYTES, shape=(rows,)) if rows else \
            np.empty(0, dtype=np.int64)
        matrix = np.memmap(path, dtype="<f4", mode="r", offset=matrix_offset, shape=(rows, dim)) if rows else \
            np.empty((0, dim), dtype=np.float32)
        return cls(path, generation, ids, matrix, max_norm)

    @staticmethod
    def write(path: Path, instance: bytes, snapshot: Snapshot, dim: int, old: VectorFile | None,
              fetch: FetchVectors) -> None:
        """Write the file for `snapshot`: rows the old file has are copied, the others fetched."""
        rows = len(snapshot.ids)
        max_norm = 0.0
        with atomic_path(path) as temporary, open(temporary, "wb") as stream:
            stream.write(b"\0" * HEADER_BYTES)
            stream.write(np.ascontiguousarray(snapshot.ids, dtype="<i8").tobytes())
            stream.write(b"\0" * (_matrix_offset(rows) - HEADER_BYTES - 8 * rows))
            for block in _blocks(rows, COPY_ROWS):
                matrix = np.ascontiguousarray(_rows(snapshot.ids[block], old, fetch), dtype="<f4")
                max_norm = max(max_norm, float(np.linalg.norm(matrix, axis=1).max(initial=0.0)))
                stream.write(matrix.tobytes())
            stream.seek(0)
            stream.write(HEADER.pack(MAGIC, snapshot.generation, rows, dim, instance, max_norm))
            stream.flush()


@dataclass(frozen=True)
class Scored:
    ids: np.ndarray            # chunk ids, best first
    scores: np.ndarray         # their dot products with the query (float64)


def nearest(query: np.ndarray, n: int, snapshot: Snapshot, file: VectorFile | None, fetch: FetchVectors,
            allowed: np.ndarray | None = None) -> Scored:
    """The n chunks of `snapshot` whose vectors have the largest dot product with `query`.

    `allowed` (chunk ids) restricts the search to those chunks.
    """
    query = np.ascontiguousarray(query, dtype=np.float32)
    parts = list(_parts(snapshot, file, fetch))
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


def _parts(snapshot: Snapshot, file: VectorFile | None, fetch: FetchVectors) -> Iterator[_Part]:
    """Pieces that together hold exactly the snapshot's chunks."""
    if file is not None and np.array_equal(file.ids, snapshot.ids):
        yield _Part(np.asarray(file.ids), file.matrix, file.max_norm)
        return
    known = np.empty(0, dtype=np.int64)
    if file is not None and len(file.ids):
        known = np.asarray(file.ids)
        yield _Part(known, file.matrix, file.max_norm, keep=np.isin(known, snapshot.ids, assume_unique=True))
    added = np.setdiff1d(snapshot.ids, known, assume_unique=True)
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


def _rows(ids: np.ndarray, old: VectorFile | None, fetch: FetchVectors) -> np.ndarray:
    if old is None or not len(old.ids):
        return fetch(ids)
    position = np.searchsorted(old.ids, ids).clip(max=len(old.ids) - 1)
    present = old.ids[position] == ids
    if present.all():
        return old.matrix[position]
    rows = np.empty((len(ids), old.matrix.shape[1]), dtype=np.float32)
    rows[present] = old.matrix[position[present]]
    rows[~present] = fetch(ids[~present])
    return rows


def _blocks(rows: int, size: int) -> Iterator[slice]:
    for start in range(0, rows, size):
        yield slice(start, min(start + size, rows))


def _matrix_offset(rows: int) -> int:
    return -(-(HEADER_BYTES + 8 * rows) // ALIGN) * ALIGN
