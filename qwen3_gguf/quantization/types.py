"""Quantization type names: llama.cpp's file types, tensor types and hybrids such as bf16_q8_0."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..errors import UserError

Q = GGMLQuantizationType


@dataclass(frozen=True)
class FileType:
    """A llama.cpp file type (llama_ftype) and the tensor type most matrices get in it."""

    name: str
    ftype: LlamaFileType
    base: GGMLQuantizationType


def _file_type(name: str, base: GGMLQuantizationType, ftype: str | None = None) -> FileType:
    return FileType(name, LlamaFileType[ftype or f"MOSTLY_{name}"], base)


# llama_ftype → default tensor type, as llama_ftype_get_default_type in llama-quant.cpp.
FILE_TYPES: dict[str, FileType] = {ft.name: ft for ft in [
    _file_type("Q2_K", Q.Q2_K), _file_type("Q2_K_S", Q.Q2_K),
    _file_type("Q3_K_S", Q.Q3_K), _file_type("Q3_K_M", Q.Q3_K), _file_type("Q3_K_L", Q.Q3_K),
    _file_type("Q4_0", Q.Q4_0), _file_type("Q4_1", Q.Q4_1),
    _file_type("Q4_K_S", Q.Q4_K), _file_type("Q4_K_M", Q.Q4_K),
    _file_type("Q5_0", Q.Q5_0), _file_type("Q5_1", Q.Q5_1),
    _file_type("Q5_K_S", Q.Q5_K), _file_type("Q5_K_M", Q.Q5_K),
    _file_type("Q6_K", Q.Q6_K), _file_type("Q8_0", Q.Q8_0),
    _file_type("IQ1_S", Q.IQ1_S), _file_type("IQ1_M", Q.IQ1_M),
    _file_type("IQ2_XXS", Q.IQ2_XXS), _file_type("IQ2_XS", Q.IQ2_XS),
    _file_type("IQ2_S", Q.IQ2_XS), _file_type("IQ2_M", Q.IQ2_S),
    _file_type("IQ3_XXS", Q.IQ3_XXS), _file_type("IQ3_XS", Q.IQ3_S),
    _file_type("IQ3_S", Q.IQ3_S), _file_type("IQ3_M", Q.IQ3_S),
    _file_type("IQ4_NL", Q.IQ4_NL), _file_type("IQ4_XS", Q.IQ4_XS),
    _file_type("TQ1_0", Q.TQ1_0), _file_type("TQ2_0", Q.TQ2_0),
    _file_type("F16", Q.F16), _file_type("BF16", Q.BF16), _file_type("F32", Q.F32, "ALL_F32"),
]}
FILE_TYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize

# Tensor types a tensor may be stored as (for --tensor-type and friends, and hybrids).
TENSOR_TYPES: dict[str, GGMLQuantizationType] = {t.name: t for t in [
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q6_K, Q.Q5_K, Q.Q5_1, Q.Q5_0, Q.Q4_K, Q.Q4_1, Q.Q4_0,
    Q.Q3_K, Q.Q2_K, Q.IQ4_XS, Q.IQ4_NL, Q.IQ3_S, Q.IQ3_XXS, Q.IQ2_S, Q.IQ2_XS, Q.IQ2_XXS,
    Q.IQ1_M, Q.IQ1_S, Q.TQ2_0, Q.TQ1_0,
]}
UNQUANTIZED = {Q.F32, Q.F16, Q.BF16}
# Types llama.cpp refuses to produce without an imatrix (tensor_requires_imatrix).
NEEDS_IMATRIX = {Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS}


@dataclass(frozen=True)
class QuantType:
    """What a TYPE name asks for: a file type, and for a hybrid the precision kept for the
    sensitive tensors (the hybrid recipe names them)."""

    name: str                                   # Q4_K_M, or a hybrid's name as given: bf16_q8_0
    file_type: FileType
    keep: GGMLQuantizationType | None = None


def tensor_type(name: str) -> GGMLQuantizationType:
    """A tensor type by name, case-insensitive (q6_k, BF16, iq4_nl, ...)."""
    found = TENSOR_TYPES.get(name.strip().upper())
    if found is None:
        raise UserError(f"unknown tensor type {name!r}; valid: {', '.join(TENSOR_TYPES)}")
    return found


def file_type_named(name: str) -> FileType | None:
    return FILE_TYPES.get(FILE_TYPE_ALIASES.get(name, name))


def bits_per_weight(ggml_type: GGMLQuantizationType) -> float:
    block, type_bytes = GGML_QUANT_SIZES[ggml_type]
    return 8 * type_bytes / block
