"""llama.cpp's own choice of type per tensor (llama-quant.cpp, for Qwen3: dense, not Falcon)."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..gguf_file import TensorInfo
from ..tensor_names import OUTPUT, TOKEN_EMBEDDING
from .types import FileType

Q = GGMLQuantizationType


@dataclass(frozen=True)
class ModelFacts:
    n_layer: int
    n_gqa: int
    tied: bool           # no output.weight: token_embd doubles as the output head
    has_imatrix: bool


_CATEGORIES = [  # tensor_get_category: first substring found wins
    ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
]
_LOW_IQ = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}


def _category(name: str) -> str:
    if name in (OUTPUT, TOKEN_EMBEDDING):
        return name.removesuffix(".weight")
    return next((category for needle, category in _CATEGORIES if needle in name), "other")


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that get more bits in Q4_K_M/Q5_K_M: about half of them."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def llama_choice(tensor: TensorInfo, layer: int, ft: FileType,
                 model: ModelFacts) -> tuple[GGMLQuantizationType, str]:
    """llama_tensor_get_type_impl: the type llama.cpp picks for a quantizable tensor, and why.

    `layer` stands for llama.cpp's per-category counters, which equal the block index when
    no tensor is overridden (the only case in which this choice is left to llama.cpp).
    """
    f, base, n = ft.name, ft.base, model.n_layer
    category = _category(tensor.name)
    gqa4 = model.n_gqa >= 4
    if category == "output" or (category == "token_embd" and model.tied):
        head = "output head" if category == "output" else "token embedding (tied: also the output head)"
        if tensor.shape[0] % GGML_QUANT_SIZES[base][0]:
            return Q.Q8_0, f"{head}: rows do not fit {base.name} blocks"
        if f in _LOW_IQ | {"IQ3_XXS"}:
            return Q.Q5_K, f"{head} at {f}"
        if base != Q.Q8_0:
            return Q.Q6_K, head
        return base, head
    if category == "token_embd":
        if f in {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"}:
            return Q.Q2_K, f"token embedding at {f}"
        if f in {"IQ2_S", "IQ2_M", "IQ3_XXS"}:
            return Q.IQ3_S, f"token embedding at {f}"
        if f in {"TQ1_0", "TQ2_0"}:
            return Q.Q4_K, f"token embedding at {f}"
        return base, "base type"
    if f in _LOW_IQ:
        low_iq_up = Q.IQ3_S if f in {"IQ2_S", "IQ2_M"} else Q.Q2_K
        if category == "attn_v":
            return (Q.Q4_K, "attn_v with GQA ≥ 4") if gqa4 else (low_iq_up, f"attn_v at {f}")
        if category == "ffn_down" and layer < n // 8:
            return low_iq_up, "ffn_down in the first 1/8 of layers"
        if category == "attn_output" and f in {"IQ1_S", "IQ1_M"}:
            return Q.IQ2_XXS, f"attn_output at {f}"
        if category == "attn_output" and f in {"IQ2_S", "IQ2_M"}:
            return Q.IQ3_S, f"attn_output at {f}"
        return base, "base type"
    if category == "attn_v":
        return _attn_v_choice(f, base, layer, n, gqa4, model.has_imatrix)
    if category in ("attn_k", "attn_q"):
        if f == "IQ3_XS":
            return Q.IQ3_XXS, f"{category} at IQ3_XS"
        if f == "IQ3_XXS":
            return Q.IQ2_S, f"{category} at IQ3_XXS"
        return base, "base type"
    if category == "ffn_down":
        return _ffn_down_choice(f, base, layer, n, model.has_imatrix)
    if category == "attn_output":
        raised = {"Q2_K": Q.Q3_K, "IQ3_XXS": Q.IQ3_S, "Q3_K_M": Q.Q4_K, "Q3_K_L": Q.Q5_K, "IQ3_M": Q.Q4_K}
        return (raised[f], f"attn_output at {f}") if f in raised else (base, "base type")
    if category in ("ffn_gate", "ffn_up") and f == "IQ3_XS" and n // 8 <= layer < 7 * n // 8:
        return Q.IQ3_XXS, f"{category} in the middle layers at IQ3_XS"
    return base, "base type"


def _attn_v_choice(f: str, base, layer: int, n: int, gqa4: bool, has_imatrix: bool):
    if f == "Q2_K":
        return (Q.Q4_K if gqa4 else Q.Q3_K), "attn_v at Q2_K"
    if f == "Q2_K_S" and gqa4:
        return Q.Q4_K, "attn_v with GQA ≥ 4"
    if f == "IQ3_XXS":
        if gqa4:
            return Q.Q4_K, "attn_v with GQA ≥ 4"
        if has_imatrix:
            return Q.IQ3_XXS, "attn_v at IQ3_XXS with an imatrix"
        return Q.IQ3_S, "attn_v at IQ3_XXS without an imatrix"
    if f in ("IQ3_XS", "IQ3_S") and gqa4:
        return Q.Q4_K, "attn_v with GQA ≥ 4"
    if f == "IQ3_M":
        return Q.Q4_K, "attn_v at IQ3_M"
    if f == "Q3_K_M":
        return (Q.Q5_K, "attn_v in the first 2 layers") if layer < 2 else (Q.Q4_K, "attn_v at Q3_K_M")
    if f == "Q3_K_L":
        return Q.Q5_K, "attn_v at Q3_K_L"
    if f in ("IQ4_NL", "IQ4_XS") and gqa4:
        return Q.Q5_K, "attn_v with GQA ≥ 4"
    if f in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n):
        return Q.Q6_K, "attn_v in a use_more_bits layer"
    if f == "Q4_K_S" and layer < 4:
        return Q.Q5_K, "attn_v in the first 4 layers"
    return base, "base type"


def _ffn_down_choice(f: str, base, layer: int, n: int, has_imatrix: bool):
    first_eighth = layer < n // 8
    if f == "Q2_K":
        return Q.Q3_K, "ffn_down at Q2_K"
    if f == "Q2_K_S":
        return (Q.Q4_K, "ffn_down in the first 1/8 of layers") if first_eighth else (base, "base type")
    if f == "IQ3_XXS" and not has_imatrix:
        return (Q.Q4_K if first_eighth else Q.Q3_K), "ffn_down at IQ3_XXS without an imatrix"
    if f == "Q3_K_M":
        if layer < n // 16:
            return Q.Q5_K, "ffn_down in the first 1/16 of layers"
        return Q.Q4_K, "ffn_down at Q3_K_M"
    if f == "IQ3_M" and first_eighth:
        return Q.Q4_K, "ffn_down in the first 1/8 of layers"
    if f == "Q3_K_L":
        return Q.Q5_K, "ffn_down at Q3_K_L"
    if f == "Q4_K_M":
        return (Q.Q6_K, "ffn_down in a use_more_bits layer") if use_more_bits(layer, n) else (base, "base type")
    if first_eighth and f in ("IQ4_NL", "IQ4_XS") and not has_imatrix:
        return Q.Q5_K, "ffn_down in the first 1/8 of layers without an imatrix"
    if f == "Q5_K_M" and use_more_bits(layer, n):
        return Q.Q6_K, "ffn_down in a use_more_bits layer"
    if f == "Q4_K_S" and first_eighth:
        return Q.Q5_K, "ffn_down in the first 1/8 of layers"
    if f in ("Q4_0", "Q5_0") and has_imatrix and first_eighth:
        return (Q.Q4_1 if f == "Q4_0" else Q.Q5_1), "ffn_down in the first 1/8 of layers with an imatrix"
    return base, "base type"


# tensor_type_fallback: what a type becomes when a tensor's rows are not a whole number of blocks.
_FALLBACK = {
    **dict.fromkeys([Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_XS], Q.IQ4_NL),
    **dict.fromkeys([Q.Q2_K, Q.Q3_K, Q.TQ1_0, Q.TQ2_0], Q.Q4_0),
    Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0,
}


def fit_rows(ggml_type: GGMLQuantizationType, row_length: int) -> tuple[GGMLQuantizationType, str]:
    """The type llama.cpp actually stores for rows of `row_length` (its shape fallback)."""
    if row_length % GGML_QUANT_SIZES[ggml_type][0] == 0:
        return ggml_type, ""
    fallback = _FALLBACK.get(ggml_type, ggml_type)
    if row_length % GGML_QUANT_SIZES[fallback][0]:
        fallback = Q.F16
    return fallback, f"; rows of {row_length} do not fit {ggml_type.name} blocks → {fallback.name}"


def quantizable(tensor: TensorInfo) -> bool:
    """tensor_allows_quantization for Qwen3: matrices named *weight, except norms."""
    n_dims = len(tensor.shape)
    while n_dims > 1 and tensor.shape[n_dims - 1] == 1:
        n_dims -= 1
    return n_dims >= 2 and tensor.name.endswith("weight") and "_norm.weight" not in tensor.name
