"""Shared-prefix KV reuse gives the results of decoding every prompt in full.

The reused path decodes a shared prefix once (sequence 0) and copies its KV cells to each
input; the reference path (`reuse_prefix=False`) decodes every prompt from its first token.
Both run the same GGUF, so the bounds are tight: cosine ≥ 0.99999, |ΔP(yes)| ≤ 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen3_gguf import Embedder, Reranker
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION
from qwen3_gguf.runtime.batching import MIN_SHARED_PREFIX_TOKENS

QUERIES = [
    "what is GGUF?",
    "?",                                   # BPE merges ":?" across the instruction boundary
    "Wie funktioniert Quantisierung",
    "1",
    "量子计算是什么",
    "what is GGUF?",                       # identical prompts: only the EOS is the query's own
    "a much longer query " + " ".join(f"about topic {i}" for i in range(250)),  # > one decode
]
LONG_INSTRUCTION = "Retrieve passages. " + " ".join(f"Rule {i}: prefer sources of kind {i}." for i in range(90))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


@pytest.fixture(scope="module")
def plain_embedder(embedding_gguf_64):
    with Embedder(embedding_gguf_64, device="cpu", reuse_prefix=False) as embedder:
        yield embedder


@pytest.fixture(scope="module")
def plain_reranker(reranker_tied_gguf):
    with Reranker(reranker_tied_gguf, device="cpu", reuse_prefix=False) as reranker:
        yield reranker


def held_prefix(front) -> list[int]:
    runner = front.runner
    return runner.context.prefix if runner is not None and runner.context is not None else []


@pytest.mark.parametrize("instruction", [None, "Find code", LONG_INSTRUCTION],
                         ids=["default", "short", "long"])
def test_queries_match_the_no_reuse_path(embedding_gguf_64, plain_embedder, instruction):
    kwargs = {"instruction": instruction} if instruction else {"prompt_name": "query"}
    with Embedder(embedding_gguf_64, device="cpu") as embedder:
        reused = embedder.encode(QUERIES, **kwargs)
        n_held = len(held_prefix(embedder))
        one_by_one = np.stack([embedder.encode(q, **kwargs) for q in QUERIES])  # prefix held across calls
    expected = plain_embedder.encode(QUERIES, **kwargs)
    assert min_cosine(reused, expected) >= 0.99999
    assert min_cosine(one_by_one, expected) >= 0.99999
    if instruction == "Find code":  # 5 tokens: below the threshold, nothing held
        assert n_held == 0
    else:
        assert n_held >= MIN_SHARED_PREFIX_TOKENS
    if instruction == LONG_INSTRUCTION:
        assert n_held > 512  # longer than one decode: the prefix itself went in pieces


def test_packed_queries_match_transformers(embedder_64, embedding_oracle_64):
    """Thirty short queries after the held instruction share decodes (PACK_TOKENS rows each)."""
    queries = [f"query {i}: {word}" for i, word in enumerate(("gguf", "rust", "été", "数据", "why?") * 6)]
    got = embedder_64.encode(queries, prompt_name="query")
    expected = embedding_oracle_64.embed(queries, instruction=DEFAULT_INSTRUCTION)
    assert min_cosine(got, expected) >= 0.99999


def test_identical_prompts_keep_their_last_token(embedding_gguf_64, plain_embedder):
    """Identical documents share everything but the EOS, which each decodes and pools."""
    text = "the same document, three times over, with enough tokens to share"
    with Embedder(embedding_gguf_64, device="cpu") as embedder:
        got = embedder.encode([text] * 3)
        ids, _ = embedder.tokenize(text)
        assert held_prefix(embedder) == ids[:-1]
    expected = plain_embedder.encode([text])
    assert min_cosine(got, np.repeat(expected, 3, axis=0)) >= 0.99999


def test_documents_with_a_common_header(embedding_gguf_64, plain_embedder):
    header = "Company handbook, chapter 7, section 3. Confidential; do not distribute. "
    documents = [header + body for body in ("Holidays are 25 days.", "Travel is booked by HR.", "x")]
    with Embedder(embedding_gguf_64, device="cpu") as embedder:
        got = embedder.encode(documents)
        assert len(held_prefix(embedder)) >= MIN_SHARED_PREFIX_TOKENS
        unrelated = embedder.encode(["no header here", "nor here"])  # drops the held prefix
        assert held_prefix(embedder) == []
    assert min_cosine(got, plain_embedder.encode(documents)) >= 0.99999
    assert min_cosine(unrelated, plain_embedder.encode(["no header here", "nor here"])) >= 0.99999


def test_documents_then_queries_then_documents(embedding_gguf_64, plain_embedder):
    """A held prefix must never leak into inputs that do not start with it."""
    texts = ["GGUF stores tensors.", "Bananas are yellow."]
    with Embedder(embedding_gguf_64, device="cpu") as embedder:
        runs = [embedder.encode(texts), embedder.encode(texts, prompt_name="query"), embedder.encode(texts)]
    assert min_cosine(runs[0], plain_embedder.encode(texts)) >= 0.99999
    assert min_cosine(runs[1], plain_embedder.encode(texts, prompt_name="query")) >= 0.99999
    assert min_cosine(runs[2], runs[0]) >= 0.99999


RERANK_QUERY = "What is the capital of France?"
RERANK_DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Bananas are rich in potassium.",
    "Paris is the capital and most populous city of France.",  # identical prompts
    "x",
    "Berlin is the capital of Germany. " * 80,                  # suffix longer than one decode
    "法国的首都是巴黎。",
]


@pytest.mark.parametrize("query", [RERANK_QUERY, "capital? " * 150], ids=["short-query", "long-query"])
def test_rerank_matches_the_no_reuse_path(reranker_tied_gguf, plain_reranker, query):
    with Reranker(reranker_tied_gguf, device="cpu") as reranker:
        got = reranker.score(query, RERANK_DOCUMENTS)
        assert len(held_prefix(reranker)) >= 39 + 3  # system prompt, instruction, query
        alone = np.array([reranker.score(query, [d])[0] for d in RERANK_DOCUMENTS])
    expected = plain_reranker.score(query, RERANK_DOCUMENTS)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(alone, expected, atol=1e-4, rtol=0)


def test_rerank_with_a_new_query_reuses_the_system_prompt(reranker_tied_gguf, plain_reranker):
    queries = [RERANK_QUERY, "Where do bananas grow?", RERANK_QUERY]
    instruction = "Judge whether the document answers a geography question"
    with Reranker(reranker_tied_gguf, device="cpu") as reranker:
        got = [reranker.score(q, RERANK_DOCUMENTS[:4], instruction=instruction) for q in queries]
    for query, scores in zip(queries, got):
        expected = plain_reranker.score(query, RERANK_DOCUMENTS[:4], instruction=instruction)
        np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


def test_reuse_matches_transformers(reranker_tied, reranker_oracle_tied):
    got = reranker_tied.score(RERANK_QUERY, RERANK_DOCUMENTS)
    expected = reranker_oracle_tied.score(RERANK_QUERY, RERANK_DOCUMENTS)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
