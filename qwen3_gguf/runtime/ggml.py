"""The ggml side of llama.cpp's eval callbacks: a ctypes mirror of `struct ggml_tensor` and an
observer of the inputs of every weight multiplication (what an importance matrix sums).

llama.cpp's scheduler can call back before (ask=True) and after (ask=False) each graph node.
We ask for the MUL_MAT nodes whose weight (src[0]) is a blk.* tensor and copy their input
rows (src[1]) out of the backend buffer, which also works when they live on a GPU.
"""

from __future__ import annotations

import ctypes
import functools

import llama_cpp as llama
import numpy as np
from llama_cpp._ctypes_extensions import load_shared_library

GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS_INT32 = 16
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_OP_MUL_MAT = 29
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TENSOR_BYTES = 336          # sizeof(struct ggml_tensor) in ggml.h of llama-cpp-python 0.3.36
GGML_OBJECT_HEADER_BYTES = 32    # struct ggml_object, counted in ggml_tensor_overhead()


class GGMLTensor(ctypes.Structure):
    """ctypes mirror of `struct ggml_tensor` (ggml.h); its layout is checked when ggml is loaded."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * GGML_MAX_OP_PARAMS_INT32),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]


@functools.cache
def load_ggml_cpu() -> ctypes.CDLL:
    """ggml-cpu, the CPU backend, with the feature query we call declared."""
    lib = load_shared_library("ggml-cpu", llama.llama_cpp._base_path)
    lib.ggml_cpu_has_amx_int8.argtypes, lib.ggml_cpu_has_amx_int8.restype = [], ctypes.c_int
    return lib


@functools.cache
def load_ggml() -> ctypes.CDLL:
    """ggml-base, the library under libllama, with the few functions we call declared."""
    lib = load_shared_library("ggml-base", llama.llama_cpp._base_path)
    tensor_p = ctypes.POINTER(GGMLTensor)
    lib.ggml_tensor_overhead.argtypes, lib.ggml_tensor_overhead.restype = [], ctypes.c_size_t
    lib.ggml_op_name.argtypes, lib.ggml_op_name.restype = [ctypes.c_int], ctypes.c_char_p
    lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [tensor_p], ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [tensor_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    layout = (ctypes.sizeof(GGMLTensor), lib.ggml_tensor_overhead(), lib.ggml_op_name(GGML_OP_MUL_MAT))
    expected = (GGML_TENSOR_BYTES, GGML_TENSOR_BYTES + GGML_OBJECT_HEADER_BYTES, b"MUL_MAT")
    if layout != expected:
        raise RuntimeError(f"ggml's tensor layout {layout} differs from the one this code mirrors {expected}; "
                           "install llama-cpp-python==0.3.36")
    return lib


def _weight_name(name: bytes) -> str:
    """A weight's own name from a scheduler copy's name: b"CUDA0#blk.0.attn_k.weight#0" → blk.0.attn_k.weight."""
    text = name.decode("utf-8", errors="replace")
    return text.split("#")[1] if "#" in text else text


class MatMulInputObserver:
    """An eval callback that hands `on_inputs(weight, rows)` the input rows of each blk.* MUL_MAT.

    `rows` is a float32 array (tokens × weight row length) of what was multiplied by the
    weight. Exceptions (a Ctrl-C included) cannot cross llama.cpp's frames: they are kept and
    re-raised by `raise_pending()` once `llama_decode` has returned.
    """

    def __init__(self, on_inputs):
        self._ggml = load_ggml()
        self._on_inputs = on_inputs
        self._pending: BaseException | None = None
        self.callback = llama.ggml_backend_sched_eval_callback(self._observe)

    def _observe(self, node_address, ask, user_data) -> bool:  # noqa: ARG002 - ctypes signature
        try:
            node = GGMLTensor.from_address(node_address)
            if node.op != GGML_OP_MUL_MAT or self._pending is not None:
                return False
            weight, inputs = node.src[0].contents, node.src[1]
            name = _weight_name(weight.name)
            if ask:
                return name.startswith("blk.") and inputs.contents.type == GGML_TYPE_F32
            self._on_inputs(name, self._rows(inputs))
        except BaseException as exc:  # noqa: BLE001 - re-raised by raise_pending()
            self._pending = self._pending or exc
        return True

    def _rows(self, tensor_p) -> np.ndarray:
        """Copy a (possibly strided, possibly device-resident) F32 tensor out as rows of ne[0]."""
        tensor = tensor_p.contents
        raw = np.empty(self._ggml.ggml_nbytes(tensor_p), dtype=np.uint8)
        self._ggml.ggml_backend_tensor_get(tensor_p, raw.ctypes.data, 0, raw.nbytes)
        ne, nb = list(tensor.ne), list(tensor.nb)
        values = np.ndarray(shape=ne[::-1], dtype=np.float32, buffer=raw, strides=nb[::-1])
        return values.reshape(-1, ne[0])

    def raise_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending
