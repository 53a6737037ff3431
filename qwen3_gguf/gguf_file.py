"""Read and check a GGUF file before llama.cpp sees it.

llama.cpp can crash the whole process on a malformed file, so every file is opened here first
with the `gguf` reader: header, tensor table, offsets and sizes inside the file, known tensor
types, and the Qwen3 facts the runtime needs (kind, dimensions, pooling, EOS handling).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType, PoolingType

from .errors import UserError

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURE = "qwen3"
CLASSIFIER_TENSOR = "cls.output.weight"


@dataclass(frozen=True)
class ModelFile:
    """What a Qwen3 GGUF says about itself."""

    path: Path
    name: str
    kind: str                   # "embedding" or "reranker"
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    context_length: int
    feed_forward_length: int
    pooling: str | None         # "last", "rank", ... or None when the file does not say
    add_eos_token: bool | None  # None when the file does not say
    eos_token: str | None
    file_type: str
    tensor_types: dict[str, int]
    n_params: int
    tensor_bytes: int
    file_size: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / self.n_params


def read_model_file(path: str | Path) -> ModelFile:
    """Validate `path` as a Qwen3 GGUF and describe it; any defect is a UserError."""
    path = Path(path)
    reader = _open_reader(path)
    file_size = path.stat().st_size

    tensor_types: Counter[str] = Counter()
    n_params = tensor_bytes = 0
    for tensor in reader.tensors:
        try:
            type_name = GGMLQuantizationType(tensor.tensor_type).name
        except ValueError:
            raise UserError(f"{path}: tensor {tensor.name} has unknown type {tensor.tensor_type}") from None
        if tensor.data_offset + tensor.n_bytes > file_size:
            raise UserError(f"{path} is truncated: tensor {tensor.name} ends past the end of the file")
        tensor_types[type_name] += 1
        n_params += int(tensor.n_elements)
        tensor_bytes += int(tensor.n_bytes)

    fields = _Fields(reader, path)
    arch = fields.string("general.architecture")
    if arch != SUPPORTED_ARCHITECTURE:
        raise UserError(f"{path} is a {arch!r} model; qwen3-gguf runs Qwen3 embedding and reranker GGUFs only")

    tensor_names = {t.name for t in reader.tensors}
    pooling_value = fields.optional(f"{arch}.pooling_type")
    pooling = PoolingType(int(pooling_value)).name.lower() if pooling_value is not None else None
    kind = "reranker" if CLASSIFIER_TENSOR in tensor_names or pooling == "rank" else "embedding"
    if kind == "reranker" and CLASSIFIER_TENSOR not in tensor_names:
        raise UserError(f"{path} says it is a reranker but has no {CLASSIFIER_TENSOR} tensor")

    tokens = fields.optional("tokenizer.ggml.tokens")
    eos_id = fields.optional("tokenizer.ggml.eos_token_id")
    eos_token = tokens[int(eos_id)] if tokens is not None and eos_id is not None and int(eos_id) < len(tokens) else None
    add_eos = fields.optional("tokenizer.ggml.add_eos_token")
    file_type = fields.optional("general.file_type")

    return ModelFile(
        path=path,
        name=fields.optional("general.name") or path.stem,
        kind=kind,
        embedding_length=int(fields.number(f"{arch}.embedding_length")),
        block_count=int(fields.number(f"{arch}.block_count")),
        head_count=int(fields.number(f"{arch}.attention.head_count")),
        head_count_kv=int(fields.number(f"{arch}.attention.head_count_kv")),
        context_length=int(fields.number(f"{arch}.context_length")),
        feed_forward_length=int(fields.number(f"{arch}.feed_forward_length")),
        pooling=pooling,
        add_eos_token=bool(add_eos) if add_eos is not None else None,
        eos_token=eos_token,
        file_type=_file_type_name(file_type),
        tensor_types=dict(tensor_types.most_common()),
        n_params=n_params,
        tensor_bytes=tensor_bytes,
        file_size=file_size,
    )


def require_kind(model: ModelFile, kind: str) -> None:
    """Refuse an embedding GGUF where a reranker is needed, and the other way round."""
    if model.kind != kind:
        other = {"embedding": "qwen3-gguf embed / Embedder", "reranker": "qwen3-gguf rerank / Reranker"}
        raise UserError(f"{model.path} is a {model.kind} model, not a {kind}; use {other[model.kind]} for it")


def _open_reader(path: Path) -> GGUFReader:
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the path of a .gguf file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        return GGUFReader(path)
    except Exception as exc:  # the reader raises many kinds on damaged files
        raise UserError(f"{path} is a corrupted or truncated GGUF ({type(exc).__name__}: {exc})") from None


class _Fields:
    """Typed access to GGUF key/value fields with errors that name the file and key."""

    def __init__(self, reader: GGUFReader, path: Path):
        self._reader = reader
        self._path = path

    def optional(self, key: str):
        field = self._reader.get_field(key)
        if field is None:
            return None
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            return field.contents()
        value = field.contents()
        return value.item() if isinstance(value, np.generic) else value

    def string(self, key: str) -> str:
        value = self.optional(key)
        if not isinstance(value, str):
            raise UserError(f"{self._path} has no {key} (is it a GGUF model file?)")
        return value

    def number(self, key: str) -> float:
        value = self.optional(key)
        if not isinstance(value, (int, float)):
            raise UserError(f"{self._path} has no {key}; it cannot be run as a Qwen3 model")
        return value


def _file_type_name(value) -> str:
    if value is None:
        return "unknown"
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(value)
