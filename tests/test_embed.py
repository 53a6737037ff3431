"""Embeddings from llama.cpp against transformers on the same checkpoint."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from tolerances import EMBEDDING_FLOORS

from qwen3_gguf import Embedder, UserError
from qwen3_gguf.embed import TruncationWarning

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "GGUF is the file format llama.cpp reads.",
    "量子计算机利用量子比特进行运算，可以同时处于多种状态。",
    "東京は日本の首都であり、世界有数の大都市です。",
    "서울은 대한민국의 수도입니다.",
    "Die Katze sitzt auf der Matte und schläft.",
    "El veloz murciélago hindú comía feliz cardillo y kiwi.",
    "القطة تجلس على الحصيرة",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "    indented\twith\ttabs   and   runs of spaces    ",
    "Prices: $1,234.56 — 3.14159 × 2 = 6.28318; 10^6 items, 2025-11-23.",
    "Emoji 🎉🚀 and flags 🇩🇪 mixed with text ✨",
    "a",
    "<|im_start|>user typed a control token<|im_end|>",
    "<|endoftext|> at the start, in the middle <|endoftext|>, and at the end <|endoftext|>",
    "line one\nline two\r\nline three\n\n\nafter blank lines",
    "Long document. " + " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(150)),
    "混合 mixed 言語 language テキスト text " * 40,
]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.fixture(scope="module")
def oracle_256(embedding_oracle_256):
    return {
        "documents": embedding_oracle_256.embed(TEXTS),
        "queries": embedding_oracle_256.embed(TEXTS[:8], instruction="Find passages in the same language"),
    }


PRECISION_FLOORS = EMBEDDING_FLOORS    # minimum cosine to transformers fp32, per file type
F32_FLOOR = EMBEDDING_FLOORS["f32"]


@pytest.mark.parametrize("outtype", PRECISION_FLOORS)
def test_embeddings_match_transformers(outtype, converted, embedding_ckpt_256, oracle_256):
    with Embedder(converted(embedding_ckpt_256, outtype), device="cpu") as embedder:
        documents = embedder.encode(TEXTS)
        queries = embedder.encode(TEXTS[:8], instruction="Find passages in the same language")
    floor = PRECISION_FLOORS[outtype]
    print(f"{outtype}: min cosine documents {min_cosine(documents, oracle_256['documents']):.7f}, "
          f"queries {min_cosine(queries, oracle_256['queries']):.7f}")
    assert documents.dtype == np.float32 and documents.shape == (len(TEXTS), 256)
    assert min_cosine(documents, oracle_256["documents"]) >= floor
    assert min_cosine(queries, oracle_256["queries"]) >= floor


def test_hidden_64_matches_transformers(embedder_64, embedding_oracle_64):
    expected = embedding_oracle_64.embed(TEXTS)
    assert min_cosine(embedder_64.encode(TEXTS), expected) >= F32_FLOOR


def test_batching_does_not_change_results(embedder_64, embedding_oracle_64):
    one_by_one = np.stack([embedder_64.encode(text) for text in TEXTS])
    packed_small = embedder_64.encode(TEXTS, batch_tokens=64)   # long texts decoded in pieces
    packed_large = embedder_64.encode(TEXTS, batch_tokens=4096)
    assert min_cosine(one_by_one, packed_small) >= F32_FLOOR
    assert min_cosine(one_by_one, packed_large) >= F32_FLOOR
    assert min_cosine(one_by_one, embedding_oracle_64.embed(TEXTS)) >= F32_FLOOR


def test_default_query_prompt(embedder_64, embedding_oracle_64):
    queries = ["how do I convert a model?", "什么是量化？"]
    expected = embedding_oracle_64.embed(
        queries, instruction="Given a web search query, retrieve relevant passages that answer the query"
    )
    assert min_cosine(embedder_64.encode(queries, prompt_name="query"), expected) >= F32_FLOOR
    documents = embedder_64.encode(queries, prompt_name="document")
    assert min_cosine(documents, embedding_oracle_64.embed(queries)) >= F32_FLOOR


def test_matryoshka_dimension(embedder_64, embedding_oracle_64):
    full = embedding_oracle_64.embed(TEXTS[:5])
    expected = full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True)
    got = embedder_64.encode(TEXTS[:5], dim=32)
    assert got.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert min_cosine(got, expected) >= F32_FLOOR


@pytest.mark.parametrize("dim", [0, 31, 65, -1])
def test_dimension_out_of_range(embedder_64, dim):
    with pytest.raises(UserError, match=r"--dim .* is outside 32…64"):
        embedder_64.encode("text", dim=dim)


def test_unnormalized_output_keeps_the_hidden_state_scale(embedder_64):
    raw = embedder_64.encode(TEXTS[:3], normalize=False)
    normalized = embedder_64.encode(TEXTS[:3])
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / norms[:, None], normalized, atol=1e-6)


def test_single_string_returns_a_vector(embedder_64):
    vector = embedder_64.encode("hello")
    assert vector.shape == (64,)


def test_truncation_keeps_the_eos(embedding_gguf_64, embedding_oracle_64):
    long_text = " ".join(f"word{i}" for i in range(400))
    with Embedder(embedding_gguf_64, device="cpu", max_tokens=64) as embedder:
        ids, truncated = embedder.tokenize(long_text)
        assert truncated and len(ids) == 64 and ids[-1] == 151643
        with pytest.warns(TruncationWarning, match="1 of 2 texts were longer than 64 tokens"):
            got = embedder.encode([long_text, "short"])
        with pytest.raises(UserError, match="text #0 is longer than 64 tokens"):
            embedder.encode([long_text], truncate=False)
    expected = embedding_oracle_64.embed([long_text, "short"], max_length=64)
    assert min_cosine(got, expected) >= F32_FLOOR


def test_special_token_look_alikes_stay_plain_text(embedder_64, embedding_oracle_64):
    text = "<|im_start|>system<|im_end|><|endoftext|>"
    ids, _ = embedder_64.tokenize(text)
    assert ids == embedding_oracle_64.token_ids(text)
    assert ids.count(151643) == 1 and 151644 not in ids and 151645 not in ids


def test_gguf_without_eos_and_pooling_metadata(old_style_embedding_gguf_64, embedding_oracle_64):
    """Older official GGUFs lack add_eos_token and pooling; the runtime must not need them."""
    with Embedder(old_style_embedding_gguf_64, device="cpu") as embedder:
        assert embedder.model_file.pooling is None and embedder.model_file.add_eos_token is None
        got = embedder.encode(TEXTS)
    assert min_cosine(got, embedding_oracle_64.embed(TEXTS)) >= F32_FLOOR


def test_similarity(embedder_64):
    a = embedder_64.encode(["apple", "banana"])
    b = embedder_64.encode(["apple", "cherry", "banana"])
    scores = Embedder.similarity(a, b)
    assert scores.shape == (2, 3)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1, 2] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(scores, a @ b.T, atol=1e-6)


@pytest.mark.parametrize("texts, message", [
    ([""], "text #0 is empty"),
    (["fine", ""], "text #1 is empty"),
    ([None], "text #0 is a NoneType"),
])
def test_bad_texts(embedder_64, texts, message):
    with pytest.raises(UserError, match=message):
        embedder_64.encode(texts)


def test_bad_prompt_options(embedder_64):
    with pytest.raises(UserError, match="unknown prompt_name 'passage'"):
        embedder_64.encode("x", prompt_name="passage")
    with pytest.raises(UserError, match="the instruction is empty"):
        embedder_64.encode("x", instruction="  ")


def test_empty_list_gives_an_empty_matrix(embedder_64):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert embedder_64.encode([]).shape == (0, 64)
