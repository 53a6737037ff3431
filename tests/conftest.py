"""Session-wide fixtures: small Qwen3 checkpoints (built once) and their transformers oracles."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoints import FIXTURES, build_checkpoint

# Fixtures whose names hold one of these words build checkpoints, GGUFs, oracles or loaded models: a test
# that uses one (directly or through another fixture) is slow. `pytest -m "not slow"` runs the rest in seconds.
MODEL_FIXTURE_WORDS = ("ckpt", "checkpoint", "gguf", "oracle", "embedder", "reranker", "converted", "imatrix")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if any(word in name for name in fixtures for word in MODEL_FIXTURE_WORDS):
            item.add_marker(pytest.mark.slow)


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
def embedding_planted_ckpt(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "embedding-planted-256")


@pytest.fixture(scope="session")
def reranker_tied_ckpt(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "reranker-tied-64")


@pytest.fixture(scope="session")
def reranker_untied_ckpt(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "reranker-untied-64")


@pytest.fixture(scope="session")
def reranker_wide_tied_ckpt(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "reranker-wide-tied-256")


@pytest.fixture(scope="session")
def reranker_wide_untied_ckpt(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "reranker-wide-untied-256")


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


@pytest.fixture(scope="session")
def reranker_oracle_wide_tied(reranker_wide_tied_ckpt):
    from oracle import RerankerOracle

    return RerankerOracle(reranker_wide_tied_ckpt)


@pytest.fixture(scope="session")
def reranker_oracle_wide_untied(reranker_wide_untied_ckpt):
    from oracle import RerankerOracle

    return RerankerOracle(reranker_wide_untied_ckpt)


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
def embedding_planted_gguf(converted, embedding_planted_ckpt) -> Path:
    return converted(embedding_planted_ckpt, "f32")


@pytest.fixture(scope="session")
def reranker_tied_gguf(converted, reranker_tied_ckpt) -> Path:
    return converted(reranker_tied_ckpt, "f32")


@pytest.fixture(scope="session")
def reranker_untied_gguf(converted, reranker_untied_ckpt) -> Path:
    return converted(reranker_untied_ckpt, "f32")


@pytest.fixture(scope="session")
def reranker_wide_tied_gguf(converted, reranker_wide_tied_ckpt) -> Path:
    return converted(reranker_wide_tied_ckpt, "f32")


@pytest.fixture(scope="session")
def reranker_wide_untied_gguf(converted, reranker_wide_untied_ckpt) -> Path:
    return converted(reranker_wide_untied_ckpt, "f32")


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


# --- importance matrix and quantization (test_imatrix.py, test_quantize.py) -------------------

CALIBRATION_RECORDS = [
    {"query": "how do tides work", "document": "Tides are caused mainly by the Moon's gravity pulling on the oceans."},
    {"query": "量子计算是什么", "document": "量子计算机利用量子比特进行运算，可以同时处于多种状态。"},
    {"document": "def add(a, b):\n    return a + b\n"},
    {"query": "Warum ist der Himmel blau?", "document": "Kurzwelliges blaues Licht wird in der Luft stärker gestreut."},
    {"query": "كيف تعمل الألواح الشمسية", "document": "تتكون الألواح الشمسية من خلايا مصنوعة غالباً من السيليكون."},
    {"query": "रात को नींद क्यों नहीं आती", "instruction": "Find advice on sleep",
     "document": "सोने से पहले मोबाइल का इस्तेमाल कम करें और रोज़ एक ही समय पर सोएं।"},
    {"query": "日本の桜の季節", "document": "東京の桜は三月下旬から四月上旬に見ごろを迎えます。"},
    {"query": "как приготовить борщ", "document": "Для борща сначала варят бульон, затем добавляют свёклу и капусту."},
]


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory) -> Path:
    """A small JSONL calibration set: multilingual queries and documents, one custom instruction."""
    import json

    path = tmp_path_factory.mktemp("calibration") / "calibration.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in CALIBRATION_RECORDS), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def imatrix_256(embedding_gguf_256, calibration_file):
    """The importance matrix of the hidden-256 embedding GGUF on `calibration_file` (a CollectionResult)."""
    from qwen3_gguf.quantization.imatrix import collect_imatrix

    return collect_imatrix(embedding_gguf_256, [calibration_file], chunk_tokens=256, device="cpu")


@pytest.fixture(scope="session")
def search_work(tmp_path_factory) -> Path:
    """One work folder for the searches of several tests. A search keeps its measurements by the model's
    sha256 and its settings, so a test searching with an earlier test's settings reuses what that one
    measured, as a user's second search does (tests that count measurements use folders of their own)."""
    return tmp_path_factory.mktemp("search-work")
