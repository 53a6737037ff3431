"""Session-wide fixtures: small Qwen3 checkpoints (built once) and their transformers oracles."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints import FIXTURES, build_checkpoint

# --- Hugging Face checkpoints (random weights, real Qwen vocabulary) ---------------------


def _build(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp(name), **FIXTURES[name])


@pytest.fixture(scope="session")
def embedding_ckpt_64(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "embedding-64")


@pytest.fixture(scope="session")
def embedding_ckpt_256(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "embedding-256")


@pytest.fixture(scope="session")
def reranker_tied_ckpt(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "reranker-tied-64")


@pytest.fixture(scope="session")
def reranker_untied_ckpt(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "reranker-untied-64")


# --- transformers oracles on those checkpoints --------------------------------------------


@pytest.fixture(scope="session")
def embedding_oracle_64(embedding_ckpt_64):
    from oracle import EmbeddingOracle

    return EmbeddingOracle(embedding_ckpt_64)


@pytest.fixture(scope="session")
def embedding_oracle_256(embedding_ckpt_256):
    from oracle import EmbeddingOracle

    return EmbeddingOracle(embedding_ckpt_256)


@pytest.fixture(scope="session")
def reranker_oracle_tied(reranker_tied_ckpt):
    from oracle import RerankerOracle

    return RerankerOracle(reranker_tied_ckpt)


@pytest.fixture(scope="session")
def reranker_oracle_untied(reranker_untied_ckpt):
    from oracle import RerankerOracle

    return RerankerOracle(reranker_untied_ckpt)
