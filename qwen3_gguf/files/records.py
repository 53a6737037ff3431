"""Embedded records read back from the files `embed-files` and the scale-out job write (JSONL, Parquet).

Each record is a dict with `path`, `chunk`, `start`, `end`, `vector` (a float32 array; the
column may also be called `embedding`), and when the file has them `text`, `model`, and
`model_spec` (from the Parquet schema metadata the scale-out job writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError

REQUIRED = ("path", "chunk", "start", "end")
VECTOR_FIELDS = ("vector", "embedding")
PARQUET_BATCH_ROWS = 4096


def read_records(path: Path) -> Iterator[dict]:
    """The records of a .jsonl or .parquet file, or of every .parquet file in a folder (the scale-out
    job's output, partitioned by model), in file order; a malformed one is a UserError."""
    if path.is_dir():
        parts = sorted(path.rglob("*.parquet"))
        if not parts:
            raise UserError(f"{path} is a folder without .parquet files")
        for part in parts:
            yield from _parquet_records(part)
    elif not path.is_file():
        raise UserError(f"no such file: {path}")
    elif path.suffix == ".parquet":
        yield from _parquet_records(path)
    elif path.suffix in (".jsonl", ".json", ".ndjson"):
        yield from _jsonl_records(path)
    else:
        raise UserError(f"{path}: import reads .jsonl or .parquet files (as embed-files writes them)")


def _jsonl_records(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not JSON ({exc.msg})") from None
            yield _checked(record, f"{path}:{number}")


def _parquet_records(path: Path) -> Iterator[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("importing Parquet needs pyarrow (pip install pyarrow); or import the JSONL output") from None
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise UserError(f"{path} is not a readable Parquet file: {exc}") from None
    model_spec = (source.schema_arrow.metadata or {}).get(b"model_spec")   # written by the scale-out job
    row = 0
    for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        columns = batch.schema.names
        vector_field = next((name for name in VECTOR_FIELDS if name in columns), None)
        if vector_field is None:
            raise UserError(f"{path} has no vector column (looked for {' or '.join(VECTOR_FIELDS)})")
        vectors = _matrix(batch.column(vector_field), f"{path}")
        plain = batch.drop_columns([vector_field]).to_pylist()
        for i, record in enumerate(plain):
            record["vector"] = vectors[i]
            if model_spec:
                record["model_spec"] = model_spec.decode()
            yield _checked(record, f"{path} row {row + i}")
        row += len(plain)


def _matrix(column, where: str) -> np.ndarray:
    """A fixed- or variable-size list column of floats as a float32 matrix (rows of one length)."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = np.diff(np.asarray(column.offsets))
        if len(lengths) and (lengths != lengths[0]).any():
            raise UserError(f"{where}: vectors of different lengths in one file")
        width = int(lengths[0]) if len(lengths) else 0
    else:
        raise UserError(f"{where}: the vector column is {column.type}, not a list of floats")
    values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return values.reshape(len(column), width)


def _checked(record: dict, where: str) -> dict:
    missing = [name for name in REQUIRED if name not in record]
    vector = next((record[name] for name in VECTOR_FIELDS if name in record), None)
    if vector is None:
        missing.append("vector")
    if missing:
        raise UserError(f"{where}: the record has no {', '.join(missing)}")
    try:
        vector = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError(f"{where}: the vector is not a list of numbers") from None
    if vector.ndim != 1 or not len(vector) or not np.isfinite(vector).all():
        raise UserError(f"{where}: the vector must be a non-empty list of finite numbers")
    for name in ("chunk", "start", "end"):
        if not isinstance(record[name], int) or record[name] < 0:
            raise UserError(f"{where}: {name} must be a non-negative integer")
    if not isinstance(record["path"], str) or not record["path"]:
        raise UserError(f"{where}: path must be a non-empty string")
    return {**record, "vector": vector}
