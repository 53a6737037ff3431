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


# --- GGUF files converted from those checkpoints by this project's converter ---------------


class ConvertedModels:
    """Converts a checkpoint to a given precision once per session and hands out the path."""

    def __init__(self, folder: Path):
        self._folder = folder
        self._done: dict[tuple[Path, str], Path] = {}

    def __call__(self, checkpoint: Path, outtype: str) -> Path:
        from qwen3_gguf.convert import convert_checkpoint

        key = (checkpoint, outtype)
        if key not in self._done:
            out = self._folder / f"{checkpoint.name}-{outtype}.gguf"
            self._done[key] = convert_checkpoint(checkpoint, out, outtype=outtype).path
        return self._done[key]


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> ConvertedModels:
    return ConvertedModels(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="session")
def embedding_gguf_64(converted, embedding_ckpt_64) -> Path:
    return converted(embedding_ckpt_64, "f32")


@pytest.fixture(scope="session")
def embedding_gguf_256(converted, embedding_ckpt_256) -> Path:
    return converted(embedding_ckpt_256, "f32")


@pytest.fixture(scope="session")
def reranker_tied_gguf(converted, reranker_tied_ckpt) -> Path:
    return converted(reranker_tied_ckpt, "f32")


@pytest.fixture(scope="session")
def reranker_untied_gguf(converted, reranker_untied_ckpt) -> Path:
    return converted(reranker_untied_ckpt, "f32")


@pytest.fixture(scope="session")
def old_style_embedding_gguf_64(embedding_gguf_64, tmp_path_factory) -> Path:
    """The hidden-64 embedding GGUF without pooling, add_eos_token and EOS id, as older
    official Qwen3 GGUFs are."""
    from gguf_edit import copy_without_keys

    return copy_without_keys(
        embedding_gguf_64, tmp_path_factory.mktemp("old-style") / "embedding-64-old-style.gguf",
        {"qwen3.pooling_type", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.eos_token_id"},
    )


@pytest.fixture(scope="session")
def embedder_64(embedding_gguf_64):
    from qwen3_gguf import Embedder

    with Embedder(embedding_gguf_64, device="cpu") as embedder:
        yield embedder


@pytest.fixture(scope="session")
def reranker_tied(reranker_tied_gguf):
    from qwen3_gguf import Reranker

    with Reranker(reranker_tied_gguf, device="cpu") as reranker:
        yield reranker
