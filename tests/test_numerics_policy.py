"""The numerics policy keeps its promise: where it runs a quantized file with the fast numerics
(F16 KV cache, flash attention), the error they add is at most a tenth of the file's own.

Per model kind and file type, on the hidden-256 embedding fixture and the wide-logit reranker
(whose P(yes) spreads like a trained reranker's, so hidden-state error shows in the score): the
file's own error is the engine on its exact path against transformers; the added error is the fast
path against the exact path on the same file. Inputs are long enough for the policy to choose the
fast path. Then the defaults users get: a quantized file in the table runs long inputs fast and
short ones exact; exact files and Q8_0 run exact at every length.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import LlamaFileType

from qwen3_gguf import Embedder, Reranker
from qwen3_gguf.quantization import plan_quantization, quantize
from qwen3_gguf.quantization.types import FILE_TYPES
from qwen3_gguf.runtime.precision import (
    EMBEDDING,
    EXACT,
    EXACT_FILE_TYPES,
    FAST,
    FAST_FILE_TYPES,
    FAST_FROM_TOKENS,
    RERANKER,
    numerics_for,
)

BUDGET = 0.1  # the engine may add at most this fraction of the file's own error
DOCUMENTS = [
    "Short note. " + " ".join(f"Harbour {i} has tides." for i in range(12)),  # just over FAST_FROM_TOKENS
    "Report. " + " ".join(f"Section {i} covers harbour {i % 9}." for i in range(25)),
] + [
    "Long report. " + " ".join(f"Section {i} covers harbour {i % 9} and its tides." for i in range(40 + 25 * k))
    for k in range(4)
] + ["Chronik. " + " ".join(f"Im Jahr {1800 + i} wuchs die Stadt um {i} Häuser." for i in range(120))]
QUERY = "Which harbour has the highest tides?"


def type_name(file_type: LlamaFileType) -> str:
    return next(name for name, info in FILE_TYPES.items() if info.ftype == file_type)


def quantized(source, file_type, folder):
    out = folder / f"{type_name(file_type)}.gguf"
    quantize(plan_quantization(source, type_name(file_type)), out)
    return out


def cases(kind):
    return [pytest.param(t, id=type_name(t)) for t in sorted(FAST_FILE_TYPES[kind])]


@pytest.fixture(scope="module")
def expected_embeddings(embedding_oracle_256):
    return embedding_oracle_256.embed(DOCUMENTS)


@pytest.fixture(scope="module")
def expected_scores(reranker_oracle_wide_tied):
    return np.array([reranker_oracle_wide_tied.score(QUERY, [d])[0] for d in DOCUMENTS])


@pytest.mark.parametrize("file_type", cases(EMBEDDING))
def test_fast_embeddings_add_under_a_tenth_of_the_files_error(file_type, embedding_gguf_256, expected_embeddings,
                                                               tmp_path):
    path = quantized(embedding_gguf_256, file_type, tmp_path)
    expected = expected_embeddings
    with Embedder(path, device="cpu") as embedder:
        assert min(len(embedder.tokenize(d)[0]) for d in DOCUMENTS) >= FAST_FROM_TOKENS
        embedder.encode(DOCUMENTS)
        assert embedder.runner.context.settings.flash_attn  # the defaults chose the fast path
        fast = embedder.encode(DOCUMENTS)
        embedder.runner.fixed_numerics = EXACT
        exact = embedder.encode(DOCUMENTS)
    own = 1 - np.sum(exact * expected, axis=1)
    added = 1 - np.sum(fast * exact, axis=1)
    assert own.mean() > 0  # a quantized file has an error of its own to compare with
    assert added.mean() <= BUDGET * own.mean(), (added.mean(), own.mean())


@pytest.mark.parametrize("file_type", cases(RERANKER))
def test_fast_reranker_scores_add_under_a_tenth_of_the_files_error(file_type, reranker_wide_tied_gguf,
                                                                    expected_scores, tmp_path):
    path = quantized(reranker_wide_tied_gguf, file_type, tmp_path)
    expected = expected_scores
    with Reranker(path, device="cpu") as reranker:
        fast = reranker.score(QUERY, DOCUMENTS)
        assert reranker.runner.context.settings.flash_attn
        reranker.runner.fixed_numerics = EXACT
        exact = reranker.score(QUERY, DOCUMENTS)
    own, added = np.abs(exact - expected), np.abs(fast - exact)
    assert own.mean() > 0
    assert added.mean() <= BUDGET * own.mean(), (added.mean(), own.mean())


def test_the_policy_by_kind_type_and_length():
    long, short = FAST_FROM_TOKENS, FAST_FROM_TOKENS - 1
    for kind in (EMBEDDING, RERANKER):
        for file_type in [*EXACT_FILE_TYPES, LlamaFileType.MOSTLY_Q8_0, None]:
            assert numerics_for(file_type, kind=kind, n_tokens=long) == EXACT
        for file_type in FAST_FILE_TYPES[kind]:
            assert numerics_for(file_type, kind=kind, n_tokens=long) == FAST
            assert numerics_for(file_type, kind=kind) == FAST
            assert numerics_for(file_type, kind=kind, n_tokens=short) == EXACT
    assert LlamaFileType.MOSTLY_Q4_K_M in FAST_FILE_TYPES[EMBEDDING]


def test_a_user_gets_fast_long_documents_and_exact_short_ones(embedding_gguf_256, tmp_path):
    path = quantized(embedding_gguf_256, LlamaFileType.MOSTLY_Q4_K_M, tmp_path)
    with Embedder(path, device="cpu") as embedder:
        embedder.encode(DOCUMENTS[-1])
        long_context = embedder.runner.context.settings
        embedder.encode("a short query")
        short_context = embedder.runner.context.settings
    assert (long_context.kv_type, long_context.flash_attn) == (FAST.kv_type, True)
    assert (short_context.kv_type, short_context.flash_attn) == (EXACT.kv_type, False)
