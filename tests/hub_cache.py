"""A Hugging Face hub cache in the hub's own layout, filled with local files, for offline tests."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import huggingface_hub.constants

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubCache:
    """models--ORG--NAME/{blobs/<sha256>, snapshots/<commit>/<file> → blob, refs/main}."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, repo: str, filename: str, source: Path) -> Path:
        folder = self.root / f"models--{repo.replace('/', '--')}"
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        blob = folder / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, blob)
        except OSError:
            shutil.copyfile(source, blob)
        snapshot = folder / "snapshots" / COMMIT / filename
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(COMMIT)
        return snapshot

    def add_checkpoint(self, repo: str, checkpoint: Path) -> Path:
        """Every file of the checkpoint folder `checkpoint` under `repo`, as `hf download` leaves
        them; returns the snapshot folder."""
        for path in sorted(checkpoint.iterdir()):
            if path.is_file():
                snapshot = self.add(repo, path.name, path)
        return snapshot.parent


def offline_hub(monkeypatch, root: Path) -> HubCache:
    """Point huggingface_hub (in this process and in child processes) at `root`, offline."""
    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(root.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return HubCache(root)
