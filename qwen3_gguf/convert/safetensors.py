"""A minimal lazy reader for safetensors checkpoints, single-file or sharded.

The format: 8 bytes little-endian header length, a JSON header mapping tensor names to
dtype, shape and byte range, then the data section. Only headers are read up front; tensor
rows are memory-mapped on demand and unmapped when dropped.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from ..errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# How each supported dtype is held in memory. BF16 has no numpy type: it stays as its raw
# 16-bit pattern and is widened to float32 exactly by `to_float32`.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, the absolute offset of its data, dtype and shape."""

    name: str
    dtype: str  # safetensors dtype name, one of STORAGE_DTYPES
    shape: tuple[int, ...]
    file: Path
    offset: int

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * STORAGE_DTYPES[self.dtype].itemsize

    @property
    def n_rows(self) -> int:
        """Rows along the first axis; a 1-D tensor is one row."""
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def row_length(self) -> int:
        return prod(self.shape) // self.n_rows

    def map_rows(self, start: int, stop: int) -> np.ndarray:
        """Memory-map rows [start, stop) read-only as a 2-D array (BF16 as uint16).

        Only these rows are mapped, and only while the array lives: converting a tensor a few
        rows at a time keeps just those rows resident.
        """
        dtype = STORAGE_DTYPES[self.dtype]
        return np.memmap(
            self.file,
            dtype=dtype,
            mode="r",
            offset=self.offset + start * self.row_length * dtype.itemsize,
            shape=(stop - start, self.row_length),
        )


def to_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """Widen stored values of safetensors `dtype` to float32 (exact for all three dtypes)."""
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def read_weights(folder: Path) -> dict[str, TensorEntry]:
    """Index the weights of a checkpoint folder: model.safetensors, or the shards of its index."""
    if (folder / SINGLE_FILE).is_file():
        return read_header(folder / SINGLE_FILE)
    if (folder / INDEX_FILE).is_file():
        return _read_sharded(folder / INDEX_FILE)
    raise UserError(f"{folder}: no weights found (expected {SINGLE_FILE} or {INDEX_FILE})")


def _read_sharded(index_path: Path) -> dict[str, TensorEntry]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{index_path}: not a safetensors index ({error})") from None

    shard_names = sorted(set(weight_map.values()))
    for shard_name in shard_names:
        if not (index_path.parent / shard_name).is_file():
            raise UserError(f"{index_path.name} names shard {shard_name}, which is missing")

    entries: dict[str, TensorEntry] = {}
    for shard_name in shard_names:
        entries.update(read_header(index_path.parent / shard_name))
    for name, shard_name in weight_map.items():
        if name not in entries or entries[name].file.name != shard_name:
            raise UserError(f"{index_path.name} puts {name} in {shard_name}, which lacks it")
    return {name: entries[name] for name in weight_map}


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse one safetensors file's header, checking that every tensor fits in the file."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as file:
            prefix = file.read(8)
            header_size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else file_size
            if header_size > file_size - 8:
                raise UserError(f"{path}: not a safetensors file (no valid header)")
            header = json.loads(file.read(header_size))
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    except ValueError as error:
        raise UserError(f"{path}: corrupt safetensors header ({error})") from None

    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_size
    entries = {}
    for name, info in header.items():
        if name != "__metadata__":
            entries[name] = _entry(path, name, info, data_start, file_size)
    return entries


def _entry(path: Path, name: str, info: dict, data_start: int, file_size: int) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: corrupt safetensors header entry for {name}") from None
    if dtype not in STORAGE_DTYPES:
        raise UserError(
            f"tensor {name} in {path.name} has dtype {dtype}; "
            f"only {', '.join(STORAGE_DTYPES)} weights are supported"
        )
    entry = TensorEntry(name, dtype, shape, path, data_start + begin)
    if end - begin != entry.nbytes or data_start + end > file_size:
        raise UserError(f"{path}: tensor {name} is truncated or its header is corrupt")
    return entry
