"""Qwen3 embedding and reranker models as GGUF on llama.cpp."""

__version__ = "0.1.0"
