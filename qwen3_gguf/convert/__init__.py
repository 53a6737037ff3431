"""Hugging Face Qwen3 embedding/reranker checkpoint → GGUF, without torch.

The pipeline: read the checkpoint (`checkpoint`, `safetensors`), decide its kind (`kind`),
describe it (`hparams`, `vocab`, `metadata`), stream the tensors (`tensors`) and publish the
file atomically (`writer`).
"""

from .kind import KINDS, detect_kind
from .pipeline import ConversionResult, convert_checkpoint
from .tensors import OUTPUT_TYPES

OUTTYPES = tuple(OUTPUT_TYPES)

__all__ = ["KINDS", "OUTTYPES", "ConversionResult", "convert_checkpoint", "detect_kind"]
