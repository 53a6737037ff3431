"""What the oracle tests assert against transformers fp32 on the same checkpoint: the one home of
these numbers. README.md states them in the words `stated()` returns, and a test checks that it does."""

from __future__ import annotations

# Minimum cosine of embeddings to transformers fp32, per file type. F32 computes the same function
# and the engine adds no error of its own (F32 KV cache, no flash attention: runtime/precision.py);
# lower precisions are bounded by what llama.cpp's own tools reach on random weights (which
# magnify quantization error).
EMBEDDING_FLOORS = {"f32": 0.9999998, "f16": 0.9999, "bf16": 0.9995, "q8_0": 0.995}
# |ΔP(yes)| of reranker scores against transformers fp32, F32 files, tied and untied heads.
RERANK_TOLERANCE = 1e-5
# Prefix reuse against decoding every prompt whole, same file and numerics: the two differ only in
# how matrix products are blocked (float32 rounding). |ΔP(yes)|, and 1 - cosine for embeddings.
PREFIX_REUSE_TOLERANCE = 1e-6


def _number(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-") if value < 1e-3 else repr(value)


def stated() -> str:
    """The README's sentence about the tolerances."""
    floors = ", ".join(f"{_number(floor)} at {kind.upper()}" for kind, floor in EMBEDDING_FLOORS.items())
    return (f"The oracle tests assert, against transformers fp32 on the same checkpoint: embeddings with a minimum "
            f"cosine ≥ {floors}; reranker P(yes) within {_number(RERANK_TOLERANCE)} at F32 (tied and untied heads, "
            f"scores spread over 0.1–0.9); prefix reuse equal to decoding each prompt whole within "
            f"{_number(PREFIX_REUSE_TOLERANCE)}.")
