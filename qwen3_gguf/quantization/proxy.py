"""The weight-error proxy: what storing a tensor at a type costs, estimated without running the model.

For a weight W (rows of input columns) and a type T, the proxy is the noise-to-signal ratio of the
matrix product W·x over the calibration activations, with Q_T(W) the weight as stored at T:

    Σ_c imp[c] · Σ_r (W − Q_T(W))[r, c]²   /   Σ_c imp[c] · Σ_r W[r, c]²

where imp[c] is the mean squared activation of input column c (the importance matrix). A column
whose activations are large counts for more, which is how outlier channels show: a tiny column
that meets huge activations is rounded away and carries most of the error. Tensors the importance
matrix does not cover (the token embedding, an untied head) weigh their columns equally.

Q_T is llama.cpp's own quantizer, `ggml_quantize_chunk` — the function `llama_model_quantize`
calls for every tensor, with the same importance (or none) — dequantized by the `gguf` package.
At most SAMPLED_ROWS rows of a tensor, evenly spaced, are quantized: a ratio of sums over a
quarter of a million weights is as good as over all of them, and the token embedding's 151,669
rows would otherwise cost more than every other tensor together.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from ..gguf_file import TensorInfo, read_header
from .llama_choice import fit_rows

Q = GGMLQuantizationType
SAMPLED_ROWS = 256


@functools.cache
def _ggml_quantizer() -> ctypes.CDLL:
    from ..runtime.ggml import load_ggml

    lib = load_ggml()
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    return lib


def round_trip(rows: np.ndarray, ggml_type: GGMLQuantizationType, importance: np.ndarray | None) -> np.ndarray:
    """`rows` (float32, rows × row length) stored at `ggml_type` by llama.cpp and read back."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n_rows, row_length = rows.shape
    if ggml_type in (Q.F32, Q.F16, Q.BF16):
        return dequantize(_plain(rows, ggml_type), ggml_type).reshape(rows.shape)
    block, type_bytes = GGML_QUANT_SIZES[ggml_type]
    stored = np.empty((n_rows, row_length // block * type_bytes), dtype=np.uint8)
    weights = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    written = _ggml_quantizer().ggml_quantize_chunk(int(ggml_type), rows.ctypes.data, stored.ctypes.data, 0, n_rows,
                                                   row_length, None if weights is None else weights.ctypes.data)
    assert written == stored.nbytes, (ggml_type, written, stored.nbytes)
    return dequantize(stored, ggml_type).reshape(rows.shape)


def _plain(rows: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    if ggml_type == Q.F32:
        return rows.view(np.uint8)
    if ggml_type == Q.F16:
        return rows.astype(np.float16).view(np.uint8)
    rounded = (rows.view(np.uint32) + 0x7FFF + ((rows.view(np.uint32) >> 16) & 1)) >> 16   # round to nearest even
    return rounded.astype(np.uint16).view(np.uint8)


class SourceWeights:
    """The weight matrices of an unquantized GGUF (F32, F16 or BF16), a sample of rows at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.tensors: dict[str, TensorInfo] = {t.name: t for t in read_header(path).tensors}
        self._samples: dict[str, np.ndarray] = {}

    def sampled_rows(self, name: str) -> np.ndarray:
        """At most SAMPLED_ROWS rows of `name`, evenly spaced, as float32 (kept for the next type)."""
        if name not in self._samples:
            info = self.tensors[name]
            row_length, n_rows = info.shape[0], info.n_elements // info.shape[0]
            dtype = {Q.F32: np.float32, Q.F16: np.float16, Q.BF16: np.uint16}[info.type]
            matrix = np.memmap(self.path, dtype=dtype, mode="r", offset=info.offset, shape=(n_rows, row_length))
            picked = np.asarray(matrix[np.linspace(0, n_rows - 1, min(n_rows, SAMPLED_ROWS)).round().astype(int)])
            if info.type == Q.BF16:
                picked = (picked.astype(np.uint32) << 16).view(np.float32)
            self._samples[name] = picked.astype(np.float32)
        return self._samples[name]


def tensor_proxy(weights: SourceWeights, name: str, ggml_type: GGMLQuantizationType,
                 importance: np.ndarray | None, quantizer_importance: np.ndarray | None) -> float:
    """The noise-to-signal ratio of `name` stored at `ggml_type` (the type its rows fit, as llama.cpp
    stores it), weighted by `importance`; `quantizer_importance` is what the quantizer is given."""
    rows = weights.sampled_rows(name)
    stored_as = fit_rows(ggml_type, rows.shape[1])[0]
    error = rows - round_trip(rows, stored_as, quantizer_importance)
    column_weights = np.ones(rows.shape[1]) if importance is None else importance.astype(np.float64)
    signal = float(np.einsum("rc,rc,c->", rows, rows, column_weights, dtype=np.float64))
    noise = float(np.einsum("rc,rc,c->", error, error, column_weights, dtype=np.float64))
    return noise / signal if signal > 0 else 0.0
