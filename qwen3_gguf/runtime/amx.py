"""llama.cpp's AMX matrix multiply is left out (in the llama.cpp that llama-cpp-python 0.3.36
vendors it crashes the process), and the CPU weight repacking it displaces is put back by hand.

A native build on an Intel CPU with AMX (Sapphire Rapids and later) compiles an AMX path for
Q4_0, Q4_1, Q8_0 and friends and routes those weights to it through an "extra buffer type".
Its tile configuration is built on the stack, where the compiler can optimize it away, so the
first tile instruction runs without a valid configuration and the process dies with SIGILL
(measured here: `tilezero %tmm4` in `ggml_backend_amx_mul_mat`, on every Q8_0 decode; plain
llama-cpp-python `Llama.embed` dies the same way; upstream llama.cpp pull request 26954 moves
that configuration out of the stack). The engine therefore loads models without llama.cpp's
extra buffer types when the CPU backend was built with AMX.

That switch also drops the other extra buffer type, CPU_REPACK, which stores Q4_0, IQ4_NL and
Q4_K weights interleaved for ggml-cpu's fastest x86 kernels (1.6× per decoded row for Q4_0 and
IQ4_NL on this project's AMX test machine: benchmarks/results.md, "Quantization types"). So each
weight that llama.cpp would have repacked is placed in CPU_REPACK by name, through the model's
tensor buffer-type overrides: the same placement a build without AMX gets by default.
"""

from __future__ import annotations

import ctypes
import functools
import re
from collections import defaultdict
from pathlib import Path

import llama_cpp as llama
from gguf import GGMLQuantizationType
from llama_cpp._ctypes_extensions import load_shared_library

from ..gguf_file import read_header
from .ggml import load_ggml_cpu

# What ggml-cpu's repack.cpp (ggml_repack_get_optimal_repack_type) interleaves on x86 with AVX-512,
# which every AMX CPU has; a weight is repacked only when its row count is a multiple of 8.
X86_REPACKED_TYPES = frozenset({GGMLQuantizationType.Q4_0, GGMLQuantizationType.IQ4_NL, GGMLQuantizationType.Q4_K,
                                GGMLQuantizationType.Q2_K, GGMLQuantizationType.MXFP4})
REPACK_ROW_MULTIPLE = 8
GGML_BACKEND_DEVICE_TYPE_CPU = 0


@functools.cache
def built_with_amx() -> bool:
    """True when llama.cpp's CPU backend here carries the AMX path."""
    return bool(load_ggml_cpu().ggml_cpu_has_amx_int8())


class _BufferTypeOverride(ctypes.Structure):
    """struct llama_model_tensor_buft_override (llama.h): a tensor-name regex and a buffer type."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@functools.cache
def _cpu_repack_buffer_type() -> int | None:
    """ggml-cpu's CPU_REPACK buffer type, from the CPU device's extra buffer types (None if absent)."""
    ggml = load_shared_library("ggml", llama.llama_cpp._base_path)
    base = load_shared_library("ggml-base", llama.llama_cpp._base_path)
    ggml.ggml_backend_dev_by_type.argtypes, ggml.ggml_backend_dev_by_type.restype = [ctypes.c_int], ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_buft_name.argtypes, base.ggml_backend_buft_name.restype = [ctypes.c_void_p], ctypes.c_char_p

    device = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    address = device and base.ggml_backend_reg_get_proc_address(
        base.ggml_backend_dev_backend_reg(device), b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return None
    extra_buffer_types = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(device)
    index = 0
    while extra_buffer_types and extra_buffer_types[index]:
        if base.ggml_backend_buft_name(extra_buffer_types[index]) == b"CPU_REPACK":
            return extra_buffer_types[index]
        index += 1
    return None


def repack_patterns(path: Path) -> list[str]:
    """Name patterns of the file's layer weights that llama.cpp repacks on x86, one per weight kind."""
    layers_by_kind: dict[str, list[str]] = defaultdict(list)
    for tensor in read_header(path).tensors:
        if (tensor.name.startswith("blk.") and tensor.type in X86_REPACKED_TYPES and len(tensor.shape) == 2
                and tensor.shape[1] % REPACK_ROW_MULTIPLE == 0):
            _, layer, kind = tensor.name.split(".", 2)
            layers_by_kind[kind].append(layer)
    # One alternation of layer numbers per kind: std::regex recurses per alternative, and a
    # pattern naming every tensor overflowed the stack.
    return [rf"^blk\.({'|'.join(layers)})\.{re.escape(kind)}$" for kind, layers in layers_by_kind.items()]


class RepackOverrides:
    """The overrides array for llama_model_params.tensor_buft_overrides; keep it alive while loading."""

    def __init__(self, patterns: list[str], buffer_type: int):
        self._patterns = [p.encode() for p in patterns]
        entries = [_BufferTypeOverride(p, buffer_type) for p in self._patterns]
        self.array = (_BufferTypeOverride * (len(entries) + 1))(*entries, _BufferTypeOverride(None, None))

    @property
    def pointer(self) -> int:
        return ctypes.addressof(self.array)


def repack_overrides(path: Path) -> RepackOverrides | None:
    """On an AMX build, CPU_REPACK for the weights llama.cpp would repack; None elsewhere or when none."""
    if not built_with_amx():
        return None
    buffer_type = _cpu_repack_buffer_type()
    patterns = repack_patterns(Path(path)) if buffer_type else []
    return RepackOverrides(patterns, buffer_type) if patterns else None
