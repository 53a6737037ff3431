"""The engine's own numerics, chosen per model kind, file type and input length: KV cache type and
flash attention.

The weights set how exact a file can be; the engine must not add error they do not have.
llama.cpp's defaults do: its F16 KV cache rounds every key and value (and, without flash
attention, the queries and attention weights they meet), and its flash attention casts an F32
cache to F16 and, on decodes of fewer than 64 rows on the CPU, accumulates in F16 as well.
So files whose weights are exact (F32, F16, BF16) get an F32 cache without flash attention.

A quantized file may run with the fast numerics (F16 cache, flash attention) where the error they
add stays within a tenth of the file's own quantization error, measured separately for embeddings
and rerankers (the budget is checked per kind and type by tests/test_numerics_policy.py), for inputs
of at least FAST_FROM_TOKENS tokens: ggml-cpu's flash attention accumulates shorter decodes in F16,
so queries and other short inputs keep the exact path (the fast one gains 14-25% at 128 tokens,
30-41% at 2,048: benchmarks/results.md, "profile-ops"). Numbers: benchmarks/results.md
("Numerics") and docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import LlamaFileType

from .ggml import GGML_TYPE_F16, GGML_TYPE_F32

KV_TYPE_NAMES = {GGML_TYPE_F32: "F32", GGML_TYPE_F16: "F16"}
EMBEDDING, RERANKER = "embedding", "reranker"

EXACT_FILE_TYPES = frozenset({LlamaFileType.ALL_F32, LlamaFileType.MOSTLY_F16, LlamaFileType.MOSTLY_BF16})


@dataclass(frozen=True)
class Numerics:
    kv_type: int        # GGML_TYPE_F32 or GGML_TYPE_F16: llama_context_params.type_k and type_v
    flash_attn: bool

    def __str__(self) -> str:
        return f"KV {KV_TYPE_NAMES[self.kv_type]}, flash attention {'on' if self.flash_attn else 'off'}"

    @property
    def short(self) -> str:
        return f"kv-{KV_TYPE_NAMES[self.kv_type].lower()} {'fa' if self.flash_attn else 'no-fa'}"


EXACT = Numerics(kv_type=GGML_TYPE_F32, flash_attn=False)
FAST = Numerics(kv_type=GGML_TYPE_F16, flash_attn=True)

# The file types whose own error is at least ten times what FAST adds, per model kind, measured by
# tests/test_numerics_policy.py. Types not named run exact. Left out after measuring: Q8_0 (FAST added
# 15% of its embedding error), Q6_K for rerankers (over 10%), Q2_K for rerankers (10.2%).
FAST_FILE_TYPES = {
    EMBEDDING: frozenset({
        LlamaFileType.MOSTLY_Q6_K, LlamaFileType.MOSTLY_Q5_K_M, LlamaFileType.MOSTLY_Q4_K_M,
        LlamaFileType.MOSTLY_Q4_K_S, LlamaFileType.MOSTLY_Q4_0, LlamaFileType.MOSTLY_IQ4_XS,
        LlamaFileType.MOSTLY_Q3_K_M,
    }),
    RERANKER: frozenset({
        LlamaFileType.MOSTLY_Q5_K_M, LlamaFileType.MOSTLY_Q4_K_M, LlamaFileType.MOSTLY_Q4_K_S,
        LlamaFileType.MOSTLY_Q4_0, LlamaFileType.MOSTLY_Q3_K_M,
    }),
}
FAST_FROM_TOKENS = 64  # = context.FA_TILE_ROWS: shorter decodes would accumulate in F16


def numerics_for(file_type: int | None, *, kind: str = EMBEDDING, n_tokens: int | None = None) -> Numerics:
    """The KV cache type and flash-attention setting for an input of `n_tokens` (None: a long one)
    to a `kind` model stored as llama_ftype `file_type` (None: unknown, treated as exact)."""
    if file_type is None or file_type not in FAST_FILE_TYPES[kind]:
        return EXACT
    if n_tokens is not None and n_tokens < FAST_FROM_TOKENS:
        return EXACT
    return FAST
