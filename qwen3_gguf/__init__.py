"""Qwen3 embedding and reranker models as GGUF on llama.cpp.

    from qwen3_gguf import Embedder, Reranker

Importing the package loads nothing heavy: llama.cpp is loaded when a model is opened.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Embedder", "Reranker", "UserError", "convert_checkpoint"]

from .errors import UserError


def __getattr__(name: str):
    if name == "Embedder":
        from .embed import Embedder
        return Embedder
    if name == "Reranker":
        from .rerank import Reranker
        return Reranker
    if name == "convert_checkpoint":
        from .convert import convert_checkpoint
        return convert_checkpoint
    raise AttributeError(f"module 'qwen3_gguf' has no attribute {name!r}")
