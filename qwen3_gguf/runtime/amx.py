"""llama.cpp's AMX matrix multiply is left out: in the llama.cpp that llama-cpp-python 0.3.36
vendors it crashes the process.

A native build on an Intel CPU with AMX (Sapphire Rapids and later) compiles an AMX path for
Q4_0, Q4_1, Q8_0 and friends and routes those weights to it through an "extra buffer type".
Its tile configuration is built on the stack, where the compiler can optimize it away, so the
first tile instruction runs without a valid configuration and the process dies with SIGILL
(measured here: `tilezero %tmm4` in `ggml_backend_amx_mul_mat`, on every Q8_0 decode; plain
llama-cpp-python `Llama.embed` dies the same way; upstream llama.cpp pull request 26954 moves
that configuration out of the stack). The engine therefore loads models without llama.cpp's
extra buffer types when the CPU backend was built with AMX; that also gives up the CPU weight
repacking of Q4_0/IQ4_NL/Q4_K on such builds, which is slower but exact and alive.
"""

from __future__ import annotations

import functools

from .ggml import load_ggml_cpu


@functools.cache
def built_with_amx() -> bool:
    """True when llama.cpp's CPU backend here carries the AMX path."""
    return bool(load_ggml_cpu().ggml_cpu_has_amx_int8())
