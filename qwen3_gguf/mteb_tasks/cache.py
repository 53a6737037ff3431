"""Embeddings kept between runs, one .npy per (file sha256, task, subset, split, prompt type, dim)
and the exact texts and instruction embedded: a re-run embeds only what it has not embedded before.

Each entry is written atomically, so an interrupted run leaves whole entries or none."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_path


class EmbeddingCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def entry(self, model_sha256: str, task: str, subset: str, split: str, prompt_type: str, dim: int | None,
              instruction: str | None, texts: list[str]) -> Path:
        texts_digest = hashlib.sha256(json.dumps([instruction, texts], ensure_ascii=False).encode()).hexdigest()
        name = f"{subset}-{split}-{prompt_type}-{dim or 'full'}-{texts_digest[:16]}.npy"
        return self.folder / model_sha256[:16] / task / name

    @staticmethod
    def load(entry: Path) -> np.ndarray | None:
        return np.load(entry) if entry.exists() else None

    @staticmethod
    def save(entry: Path, vectors: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry) as partial, open(partial, "wb") as f:
            np.save(f, vectors)
