"""llama.cpp's process-wide state: backend initialisation, log silencing, threads and devices."""

from __future__ import annotations

import ctypes
import os
import sys

import llama_cpp as llama

from ..errors import UserError

POOLING_LAST = llama.LLAMA_POOLING_TYPE_LAST
POOLING_RANK = llama.LLAMA_POOLING_TYPE_RANK


@llama.llama_log_callback
def _discard_log(level, text, user_data):  # noqa: ARG001 - ctypes callback signature
    return None


@llama.llama_log_callback
def _log_to_stderr(level, text, user_data):  # noqa: ARG001 - ctypes callback signature
    sys.stderr.write(text.decode("utf-8", errors="replace"))


_backend_initialised = False


def init_backend(*, verbose: bool = False) -> None:
    """Initialise llama.cpp once per process; its log goes to stderr only when verbose."""
    global _backend_initialised
    llama.llama_log_set(_log_to_stderr if verbose else _discard_log, ctypes.c_void_p())
    if not _backend_initialised:
        llama.llama_backend_init()
        _backend_initialised = True


def default_threads() -> int:
    """All cores this process may run on: llama.cpp's batch decoding scales with them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def gpu_layers_for(device: str) -> int:
    """Translate the user-facing device name into llama.cpp's n_gpu_layers."""
    if device not in ("auto", "cpu", "gpu"):
        raise UserError(f"unknown device {device!r}: choose auto, cpu or gpu")
    has_gpu = bool(llama.llama_supports_gpu_offload())
    if device == "gpu" and not has_gpu:
        raise UserError(
            "this llama-cpp-python build has no GPU backend; reinstall it with "
            "CMAKE_ARGS=\"-DGGML_CUDA=on\" (or -DGGML_METAL=on) or use --device cpu"
        )
    return -1 if device != "cpu" and has_gpu else 0
