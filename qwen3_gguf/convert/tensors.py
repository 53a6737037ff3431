"""Hugging Face tensors → GGUF tensors: names, expected shapes, output types and the bytes.

The name tables are data. Shapes are written in numpy order (rows, columns) with symbolic
dimensions that `plan_tensors` resolves from the hyperparameters. Qwen3 needs no Q/K
permutation: llama.cpp applies NeoX-style rope to it, as transformers does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize

from ..errors import UserError
from ..tensor_names import CLASSIFIER, OUTPUT, OUTPUT_NORM, TOKEN_EMBEDDING
from .hparams import Qwen3HParams
from .safetensors import TensorEntry, to_float32

# HF name (without the optional "model." prefix) → (GGUF name, shape).
GLOBAL_TENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embed_tokens.weight": ("token_embd.weight", ("vocab", "hidden")),
    "norm.weight": ("output_norm.weight", ("hidden",)),
    "lm_head.weight": ("output.weight", ("vocab", "hidden")),
}
# HF name inside layers.N → (GGUF name inside blk.N, shape).
BLOCK_TENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "input_layernorm.weight": ("attn_norm.weight", ("hidden",)),
    "self_attn.q_proj.weight": ("attn_q.weight", ("q_width", "hidden")),
    "self_attn.k_proj.weight": ("attn_k.weight", ("kv_width", "hidden")),
    "self_attn.v_proj.weight": ("attn_v.weight", ("kv_width", "hidden")),
    "self_attn.o_proj.weight": ("attn_output.weight", ("hidden", "q_width")),
    "self_attn.q_norm.weight": ("attn_q_norm.weight", ("head_dim",)),
    "self_attn.k_norm.weight": ("attn_k_norm.weight", ("head_dim",)),
    "post_attention_layernorm.weight": ("ffn_norm.weight", ("hidden",)),
    "mlp.gate_proj.weight": ("ffn_gate.weight", ("ffn", "hidden")),
    "mlp.up_proj.weight": ("ffn_up.weight", ("ffn", "hidden")),
    "mlp.down_proj.weight": ("ffn_down.weight", ("hidden", "ffn")),
}
LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")
RERANK_LABELS = ("yes", "no")  # rows of the rerank head, in this order

CHUNK_ELEMENTS = 1 << 22  # values converted at a time; bounds the float32 scratch to 16 MiB


@dataclass(frozen=True)
class OutputType:
    """An --outtype: the GGUF file type and the tensor type of its large matrices."""

    name: str
    file_type: LlamaFileType
    tensor_type: GGMLQuantizationType


OUTPUT_TYPES: dict[str, OutputType] = {
    t.name: t
    for t in (
        OutputType("f32", LlamaFileType.ALL_F32, GGMLQuantizationType.F32),
        OutputType("f16", LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16),
        OutputType("bf16", LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16),
        OutputType("q8_0", LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
    )
}
# (source dtype, GGUF type) pairs whose bytes are copied as they are.
PASSTHROUGH = {
    ("BF16", GGMLQuantizationType.BF16),
    ("F16", GGMLQuantizationType.F16),
    ("F32", GGMLQuantizationType.F32),
}


def output_type_named(name: str) -> OutputType:
    if name not in OUTPUT_TYPES:
        raise UserError(f"unknown output type {name!r} (valid: {', '.join(OUTPUT_TYPES)})")
    return OUTPUT_TYPES[name]


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: its name, type and shape, and the source rows it is made from."""

    name: str
    source: TensorEntry
    type: GGMLQuantizationType
    rows: tuple[int, ...] | None = None  # a selection of source rows (the rerank head), or all

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy-order shape (GGUF stores it reversed)."""
        return _selected_shape(self.source, self.rows)

    @property
    def byte_shape(self) -> tuple[int, ...]:
        return quant_shape_to_byte_shape(self.shape, self.type)

    @property
    def nbytes(self) -> int:
        return prod(self.byte_shape)

    def encode(self) -> np.ndarray:
        """The tensor's GGUF bytes, converted a chunk of rows at a time from the mapped source."""
        encoded = np.empty(self.byte_shape, dtype=np.uint8)
        out_rows = encoded.reshape(-1, encoded.shape[-1])  # a 1-D tensor is one row
        for start, stop, values in self._source_chunks():
            converted = _convert(values, self.source.dtype, self.type)
            out_rows[start:stop] = converted.view(np.uint8).reshape(stop - start, -1)
        return encoded

    def _source_chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, rows) of the output, each chunk's source rows mapped only while in use."""
        if self.rows is not None:
            for index, row in enumerate(self.rows):
                yield index, index + 1, self.source.map_rows(row, row + 1)
            return
        step = max(1, CHUNK_ELEMENTS // self.source.row_length)
        for start in range(0, self.source.n_rows, step):
            stop = min(start + step, self.source.n_rows)
            yield start, stop, self.source.map_rows(start, stop)


def _convert(values: np.ndarray, dtype: str, target: GGMLQuantizationType) -> np.ndarray:
    if (dtype, target) in PASSTHROUGH:
        return values
    return quantize(to_float32(values, dtype), target)


def tensor_type(
    gguf_name: str, shape: tuple[int, ...], output_type: OutputType
) -> GGMLQuantizationType:
    """llama.cpp's converter rule: norms and other 1-D tensors stay F32; a matrix whose rows do
    not split into whole quantization blocks falls back to F16; the rest gets the output type."""
    if len(shape) == 1 or gguf_name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    block_size, _ = GGML_QUANT_SIZES[output_type.tensor_type]
    if shape[-1] % block_size:
        return GGMLQuantizationType.F16
    return output_type.tensor_type


def gguf_name(hf_name: str) -> tuple[str, tuple[str, ...]]:
    """Map an HF tensor name (with or without "model.") to its GGUF name and symbolic shape."""
    name = hf_name.removeprefix("model.")
    if name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[name]
    layer = LAYER_NAME.fullmatch(name)
    if layer and layer.group(2) in BLOCK_TENSORS:
        block_name, shape = BLOCK_TENSORS[layer.group(2)]
        return f"blk.{int(layer.group(1))}.{block_name}", shape
    raise UserError(f"unknown tensor {hf_name} in the checkpoint (not part of a Qwen3 model)")


def plan_tensors(
    sources: dict[str, TensorEntry],
    hparams: Qwen3HParams,
    output_type: OutputType,
    rerank_rows: tuple[int, int] | None,
) -> list[PlannedTensor]:
    """Decide every GGUF tensor, checking names and shapes against the hyperparameters.

    With `rerank_rows` (the "yes" and "no" token ids) the LM head is replaced by the rerank
    head: those two rows of lm_head, or of embed_tokens when the embeddings are tied.
    """
    by_gguf_name = _map_names(sources, hparams)
    _check_complete(by_gguf_name, hparams)

    lm_head = by_gguf_name.pop(OUTPUT, None)
    order = [TOKEN_EMBEDDING]
    for block in range(hparams.block_count):
        order += [f"blk.{block}.{name}" for name, _ in BLOCK_TENSORS.values()]
    order.append(OUTPUT_NORM)
    planned = [_planned(name, by_gguf_name[name], output_type) for name in order]

    if rerank_rows is not None:
        head = by_gguf_name[TOKEN_EMBEDDING] if hparams.tie_word_embeddings else lm_head
        if head is None:
            raise UserError(
                "config.json says tie_word_embeddings is false, "
                "but the checkpoint has no lm_head.weight"
            )
        planned.append(_planned(CLASSIFIER, head, output_type, rows=rerank_rows))
    elif lm_head is not None and not hparams.tie_word_embeddings:
        planned.append(_planned(OUTPUT, lm_head, output_type))
    return planned


def _planned(
    name: str, source: TensorEntry, output_type: OutputType, rows: tuple[int, ...] | None = None
) -> PlannedTensor:
    type_ = tensor_type(name, _selected_shape(source, rows), output_type)
    return PlannedTensor(name, source, type_, rows)


def _selected_shape(source: TensorEntry, rows: tuple[int, ...] | None) -> tuple[int, ...]:
    return source.shape if rows is None else (len(rows), *source.shape[1:])


def find_embedding(sources: dict[str, TensorEntry]) -> TensorEntry:
    """The token embedding matrix, whose row count is the vocabulary size."""
    for name, entry in sources.items():
        if name.removeprefix("model.") == "embed_tokens.weight":
            return entry
    raise UserError("the checkpoint has no embed_tokens.weight tensor")


def _map_names(sources: dict[str, TensorEntry], hparams: Qwen3HParams) -> dict[str, TensorEntry]:
    """GGUF name → source tensor, refusing unknown names, duplicates and wrong shapes."""
    dims = {
        "vocab": find_embedding(sources).shape[0],
        "hidden": hparams.embedding_length,
        "q_width": hparams.head_count * hparams.head_dim,
        "kv_width": hparams.head_count_kv * hparams.head_dim,
        "head_dim": hparams.head_dim,
        "ffn": hparams.feed_forward_length,
    }
    mapped: dict[str, TensorEntry] = {}
    for hf_name, entry in sources.items():
        name, symbolic_shape = gguf_name(hf_name)
        expected = tuple(dims[dim] for dim in symbolic_shape)
        if entry.shape != expected:
            raise UserError(
                f"tensor {hf_name} has shape {list(entry.shape)}, "
                f"but config.json implies {list(expected)}"
            )
        if name in mapped:
            raise UserError(f"the checkpoint holds {name} twice: {mapped[name].name}, {hf_name}")
        mapped[name] = entry
    return mapped


def _check_complete(mapped: dict[str, TensorEntry], hparams: Qwen3HParams) -> None:
    """Every tensor of a Qwen3 model with config.json's layer count, and no layer beyond it."""
    layers = hparams.block_count
    per_layer = [f"layers.{i}.{name}" for i in range(layers) for name in BLOCK_TENSORS]
    for hf_name in ["norm.weight", *per_layer]:
        if gguf_name(hf_name)[0] not in mapped:
            raise UserError(f"the checkpoint has no {hf_name} tensor")
    for name, entry in mapped.items():
        if name.startswith("blk.") and int(name.split(".")[1]) >= layers:
            raise UserError(f"the checkpoint has {entry.name}; config.json has {layers} layers")
