"""Is a checkpoint a Qwen3 embedding model or a Qwen3 reranker? Decided by evidence, in order."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import UserError
from .checkpoint import folder_names, open_checkpoint, readme_title
from .hparams import check_architecture

KINDS = ("embedding", "reranker")
# Substrings of model names that give the kind away, e.g. "Qwen/Qwen3-Reranker-0.6B".
NAME_HINTS = {"qwen3-reranker": "reranker", "qwen3-embedding": "embedding"}


def detect_kind(src: str | Path) -> tuple[str, str]:
    """The kind of the Qwen3 checkpoint in `src` and the evidence for it, as (kind, reason)."""
    checkpoint = open_checkpoint(Path(src))
    check_architecture(checkpoint.config)
    return decide_kind(checkpoint.folder, checkpoint.config, checkpoint.tensors)


def decide_kind(
    folder: Path, config: dict[str, Any], tensor_names: Collection[str]
) -> tuple[str, str]:
    """Try, in order: the README title, a sentence-transformers Pooling module, the folder and
    config names, and finally the tensor layout of a bare Qwen3Model (an embedding model)."""
    title = readme_title(folder)
    if title and (kind := _hinted_kind(title)):
        return kind, f"README.md title '# {title}'"
    if _has_pooling_module(folder):
        return "embedding", "modules.json has a sentence-transformers Pooling module"
    for name in folder_names(folder):
        if kind := _hinted_kind(name):
            return kind, f"folder name '{name}'"
    name_or_path = str(config.get("_name_or_path") or "")
    if kind := _hinted_kind(name_or_path):
        return kind, f"config.json _name_or_path '{name_or_path}'"
    has_prefix = any(name.startswith("model.") for name in tensor_names)
    if "lm_head.weight" not in tensor_names and not has_prefix:
        return "embedding", "tensor names without 'model.' and no lm_head (a bare Qwen3Model)"
    raise UserError(
        f"cannot tell whether {folder} is an embedding or a reranker checkpoint; "
        "pass --kind embedding or --kind reranker"
    )


def _hinted_kind(text: str) -> str | None:
    return next((kind for hint, kind in NAME_HINTS.items() if hint in text.lower()), None)


def _has_pooling_module(folder: Path) -> bool:
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return False
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        return any(str(module.get("type", "")).endswith(".Pooling") for module in modules)
    except (ValueError, AttributeError, TypeError):
        raise UserError(f"{modules_path}: not a sentence-transformers modules list") from None
