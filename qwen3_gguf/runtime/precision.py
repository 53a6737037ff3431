"""The engine's own numerics, chosen from the file's precision: KV cache type and flash attention.

The weights set how exact a file can be; the engine must not add error they do not have.
llama.cpp's defaults do: its F16 KV cache rounds every key and value (and, without flash
attention, the queries and attention weights they meet), and its flash attention casts an F32
cache to F16 and, on decodes of fewer than 64 rows on the CPU, accumulates in F16 as well.
So files whose weights are exact (F32, F16, BF16) get an F32 cache without flash attention.
Quantized files may trade exactness for speed only where the error added stays under a tenth
of the file's own quantization error; the F16 cache with flash attention added more at Q8_0
and Q4_K_M, so they get the exact numerics too. Numbers: benchmarks/results.md ("Numerics").
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import LlamaFileType

from .ggml import GGML_TYPE_F16, GGML_TYPE_F32

KV_TYPE_NAMES = {GGML_TYPE_F32: "F32", GGML_TYPE_F16: "F16"}

EXACT_FILE_TYPES = frozenset({LlamaFileType.ALL_F32, LlamaFileType.MOSTLY_F16, LlamaFileType.MOSTLY_BF16})


@dataclass(frozen=True)
class Numerics:
    kv_type: int        # GGML_TYPE_F32 or GGML_TYPE_F16: llama_context_params.type_k and type_v
    flash_attn: bool

    def __str__(self) -> str:
        return f"KV {KV_TYPE_NAMES[self.kv_type]}, flash attention {'on' if self.flash_attn else 'off'}"


EXACT = Numerics(kv_type=GGML_TYPE_F32, flash_attn=False)
QUANTIZED = EXACT  # F16 KV + flash attention missed the 10% budget at Q8_0 and Q4_K_M: benchmarks/results.md


def numerics_for(file_type: int | None) -> Numerics:
    """The KV cache type and flash-attention setting for a file of this llama_ftype (None: unknown)."""
    if file_type is None or file_type in EXACT_FILE_TYPES:
        return EXACT
    return QUANTIZED
