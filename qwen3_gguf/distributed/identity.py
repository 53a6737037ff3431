"""Which model made a vector, and the deterministic id of every output row.

A row's id is a hash of (its source, its chunk index, the model fingerprint). The source is a
file's absolute path, a table row's id column, or, for tables without one, a hash of the row's
text. The fingerprint is the GGUF's content hash plus the output dimension, so the same corpus
embedded twice with the same model and dim gives the same ids (a rerun can skip them) and
any other model or dim gives other ids.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..catalog import is_model_path, resolve_model
from ..gguf_file import file_sha256, read_model_file, require_kind
from ..limits import check_dim

ID_HEX_DIGITS = 32           # 128 bits: no collision in any corpus that fits on disks


@dataclass(frozen=True)
class ModelIdentity:
    """The embedding model and output dimension a sink's vectors belong to."""

    spec: str                # what was asked for: a GGUF path (absolute) or a catalog name
    path: str                # the GGUF file the driver resolved (workers load `spec`)
    name: str                # general.name
    file_type: str           # Q8_0, F16, ...
    embedding_length: int
    dim: int                 # the vectors' dimension (≤ embedding_length with Matryoshka)
    sha256: str              # of the GGUF file's bytes

    @classmethod
    def of(cls, model: str | Path, dim: int | None = None) -> ModelIdentity:
        """Read and hash the GGUF behind `model` (a path or catalog name)."""
        path = resolve_model(model, "embedding")
        model_file = read_model_file(path)
        require_kind(model_file, "embedding")
        check_dim(dim, model_file.embedding_length)
        spec = str(Path(model).resolve()) if is_model_path(model) else str(model)
        return cls(spec, str(model_file.path.resolve()), model_file.name, model_file.file_type,
                    model_file.embedding_length, dim or model_file.embedding_length, file_sha256(model_file.path))

    @property
    def key(self) -> str:
        """The `model` field of every row and the Parquet partition name: readable and unique."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-").lower() or "model"
        return f"{name}-{self.file_type.lower()}-{self.sha256[:12]}"

    @property
    def fingerprint(self) -> str:
        """What row ids hash besides source and chunk: the model's content and the dimension."""
        return f"{self.sha256}:{self.dim}"

    def metadata(self) -> dict[str, str]:
        """What a sink records about its vectors (strings, for Arrow schema metadata)."""
        return {"model": self.key, "model_spec": self.spec, "model_name": self.name, "quant": self.file_type,
                "embedding_length": str(self.embedding_length), "dim": str(self.dim), "sha256": self.sha256}


def text_source(text: str) -> str:
    """The source of a table row that has no id column: its text's hash."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def chunk_id(source: str, chunk: int, fingerprint: str) -> str:
    """The id of chunk `chunk` of `source` embedded by the model with `fingerprint`."""
    digest = hashlib.sha256(f"{source}\0{chunk}\0{fingerprint}".encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()[:ID_HEX_DIGITS]


def id_set(ids) -> np.ndarray:
    """Ids as a sorted array of fixed-width bytes: compact, shareable, searchable."""
    return np.unique(np.asarray(list(ids), dtype=f"S{ID_HEX_DIGITS}"))


def contains(sorted_ids: np.ndarray, ids: list[str]) -> np.ndarray:
    """Which of `ids` are in `sorted_ids` (from `id_set`): the anti-join's test."""
    if not len(sorted_ids) or not ids:
        return np.zeros(len(ids), dtype=bool)
    wanted = np.asarray(ids, dtype=f"S{ID_HEX_DIGITS}")
    positions = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    return sorted_ids[positions] == wanted
