"""The engine: the only room that touches llama-cpp-python's low-level API and ctypes.

backend (process-wide init, logs, threads, devices) → model (a loaded GGUF and its tokenizer) →
context (decodes, pooled vectors, shared prefixes) → batching (the policy: which inputs share a
decode). ggml holds the tensor mirror the eval callbacks read. Everything else calls these.
"""

from .backend import default_threads, gpu_layers_for, init_backend
from .batching import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_SEQUENCES, PooledRunner
from .context import (
    FA_SHORT_SPAN,
    FA_TILE_ROWS,
    POOLING_LAST,
    POOLING_RANK,
    ContextSettings,
    PooledContext,
    common_prefix_length,
    split_pieces,
)
from .ggml import GGMLTensor, MatMulInputObserver, load_ggml
from .model import LlamaModel

__all__ = [
    "DEFAULT_BATCH_TOKENS", "DEFAULT_MAX_SEQUENCES", "FA_SHORT_SPAN", "FA_TILE_ROWS", "POOLING_LAST", "POOLING_RANK",
    "ContextSettings", "GGMLTensor", "LlamaModel", "MatMulInputObserver", "PooledContext", "PooledRunner",
    "common_prefix_length", "default_threads", "gpu_layers_for", "init_backend", "load_ggml", "split_pieces",
]
