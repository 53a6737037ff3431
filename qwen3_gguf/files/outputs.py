"""Where file embeddings go: JSONL (default), NPY with a JSONL sidecar, or Parquet.

Every record names its chunk (`id`, `path`, `chunk`, `start`, `end`, `dim`) and, given a
`Provenance`, the chunk's `text` and the model that made the vector (`model`: catalog name or
GGUF file name, `model_sha256`, `instruction`: the query task, null for documents), so that the
file alone can be searched or imported (`qwen3-gguf index --import`).

Files are written under a temporary name in the target folder and renamed when the run ends
well, so an interrupted run leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import abc
import contextlib
import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..atomic import atomic_paths
from ..catalog import is_model_path
from ..errors import UserError
from ..gguf_file import file_sha256
from .chunking import Chunk

FORMATS = ("jsonl", "npy", "parquet")
NPY_HEADER_BYTES = 128     # fixed, so the row count can be filled in when the run ends


@dataclass(frozen=True)
class Provenance:
    """What each record says about how it was made, and whether it carries its chunk's text."""

    model: str                  # the catalog name, or the GGUF's file name
    model_sha256: str           # of the GGUF file's bytes
    instruction: str | None     # the query task the chunks were embedded with; None for documents
    text: bool = True

    @classmethod
    def of(cls, spec: str, model_file, instruction: str | None, *, text: bool = True) -> Provenance:
        """The provenance of vectors made by the GGUF `model_file`, asked for as `spec` (a path or catalog name)."""
        name = Path(spec).name if is_model_path(spec) else str(spec)
        return cls(name, file_sha256(model_file.path), instruction, text)


def record(chunk: Chunk, dim: int, provenance: Provenance | None = None) -> dict:
    """The description of one chunk, as every format writes it."""
    fields = {"id": f"{chunk.path}#{chunk.index}", "path": chunk.path, "chunk": chunk.index,
              "start": chunk.start, "end": chunk.end, "dim": dim}
    if provenance is not None:
        if provenance.text:
            fields["text"] = chunk.text
        fields.update(model=provenance.model, model_sha256=provenance.model_sha256,
                      instruction=provenance.instruction)
    return fields


def sidecar_path(path: Path) -> Path:
    """The JSONL file describing the rows of an .npy output."""
    return path.with_suffix(".jsonl") if path.suffix == ".npy" else path.with_name(path.name + ".jsonl")


def check_output(path: Path | None, fmt: str) -> None:
    """Refuse a format that cannot be written, before any work is done."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose {', '.join(FORMATS)}")
    if fmt != "jsonl" and path is None:
        raise UserError(f"--format {fmt} writes a file: give it with -o")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow, which is not installed (pip install pyarrow); "
                            "or use --format jsonl or npy") from None
    if path is not None and path.is_dir():
        raise UserError(f"-o {path} is a folder; give a file name")


@contextlib.contextmanager
def open_output(path: Path | None, fmt: str, provenance: Provenance | None = None) -> Iterator[_Writer]:
    """A writer for `fmt`; its files appear under their names only if the block ends without error.
    With `provenance`, every record carries the model's identity (and the chunk text unless it says not)."""
    check_output(path, fmt)
    if path is None:
        yield _JsonlWriter(sys.stdout, provenance)
        return
    targets = [path, sidecar_path(path)] if fmt == "npy" else [path]  # the .npy appears last
    writer: _Writer | None = None
    with _cannot_write(path), atomic_paths(*targets) as temporaries:
        try:
            if fmt == "jsonl":
                writer = _JsonlWriter(open(temporaries[0], "w", encoding="utf-8"), provenance)
            elif fmt == "npy":
                writer = _NpyWriter(temporaries[0], temporaries[1], provenance)
            else:
                writer = _ParquetWriter(temporaries[0], provenance)
            yield writer
        finally:
            if writer is not None:
                writer.close()


@contextlib.contextmanager
def _cannot_write(path: Path):
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


class _Writer(abc.ABC):
    """One output format: records are written batch by batch, then the file is finished."""

    @abc.abstractmethod
    def write(self, chunks: list[Chunk], vectors: np.ndarray) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class _JsonlWriter(_Writer):
    def __init__(self, stream: IO[str], provenance: Provenance | None):
        self._stream = stream
        self._provenance = provenance

    def write(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        dim = vectors.shape[1]
        for chunk, vector in zip(chunks, vectors):
            line = {**record(chunk, dim, self._provenance), "vector": [round(x, 7) for x in vector.tolist()]}
            self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not sys.stdout and not self._stream.closed:
            self._stream.close()


class _NpyWriter(_Writer):
    """A float32 matrix streamed row block by row block; the header is filled in at the end."""

    def __init__(self, path: Path, sidecar: Path, provenance: Provenance | None):
        self._provenance = provenance
        self._file = open(path, "wb")
        self._file.write(b"\0" * NPY_HEADER_BYTES)
        self._sidecar = open(sidecar, "w", encoding="utf-8")
        self._rows = 0
        self._dim = 0

    def write(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        self._dim = vectors.shape[1]
        self._file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._rows += len(vectors)
        for chunk in chunks:
            self._sidecar.write(json.dumps(record(chunk, self._dim, self._provenance), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_npy_header((self._rows, self._dim)))
        self._file.close()
        self._sidecar.close()


def _npy_header(shape: tuple[int, int]) -> bytes:
    """An NPY 1.0 header for a little-endian float32 C-order matrix, padded to NPY_HEADER_BYTES."""
    description = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape[0]}, {shape[1]}), }}"
    body = description.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin-1")


class _ParquetWriter(_Writer):
    def __init__(self, path: Path, provenance: Provenance | None):
        self._path = path
        self._provenance = provenance
        self._writer = None

    def write(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = vectors.shape[1]
        rows = [record(c, dim, self._provenance) for c in chunks]
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        table = pa.table(columns, schema=self._schema(columns, dim))
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._path, table.schema)
        self._writer.write_table(table)

    @staticmethod
    def _schema(columns: dict, dim: int):
        """The columns' types, fixed (a batch whose instructions are all null still has a string column)."""
        import pyarrow as pa

        types = {"id": pa.string(), "path": pa.string(), "chunk": pa.int64(), "start": pa.int64(), "end": pa.int64(),
                 "dim": pa.int64(), "text": pa.string(), "model": pa.string(), "model_sha256": pa.string(),
                 "instruction": pa.string(), "vector": pa.list_(pa.float32(), dim)}
        return pa.schema([(name, types[name]) for name in columns])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
