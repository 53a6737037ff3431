"""MTEB task scores of a GGUF: an mteb 2.x encoder over Embedder, with the Qwen3 query instructions,
embeddings cached per file, and tasks from mteb's registry or a local BEIR-style folder.

Needs the optional extra `qwen3-gguf[mteb]` (mteb, and through it torch, which mteb's data loaders use)."""

from .cache import EmbeddingCache
from .encoder import GGUFCrossEncoder, GGUFEncoder
from .run import TaskScore, load_tasks, resolve_tasks, run_tasks

__all__ = ["EmbeddingCache", "GGUFCrossEncoder", "GGUFEncoder", "TaskScore", "load_tasks", "resolve_tasks", "run_tasks"]
