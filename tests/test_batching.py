"""The batching policy: how inputs become llama_decode calls, and that none of it changes results."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from qwen3_gguf import Embedder, runtime
from qwen3_gguf.runtime import FA_SHORT_SPAN, FA_TILE_ROWS, POOLING_LAST, POOLING_RANK, split_pieces
from qwen3_gguf.runtime.batching import (
    DEFAULT_MAX_SEQUENCES,
    MIN_PIECE_TOKENS,
    PACK_TOKENS,
    PooledRunner,
    plan_packs,
    shared_prefix_length,
)
from qwen3_gguf.runtime.precision import EXACT, Numerics

# --- planning ---------------------------------------------------------------------------------


def test_packs_are_sorted_by_length_and_within_budgets():
    lengths = [300, 10, 200, 10, 600, 50, 120]
    packs = plan_packs(lengths, pack_tokens=256, max_sequences=3)
    order = [i for pack in packs for i in pack]
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths)
    for pack in packs:
        assert len(pack) <= 3
        assert len(pack) == 1 or sum(lengths[i] for i in pack) <= 256
    assert [4] in packs and [0] in packs  # longer than the budget: alone


def test_default_policy_packs_only_short_inputs():
    """Queries after a shared instruction (a few tokens each) share decodes; documents do not."""
    lengths = [9, 8, 40, 30, 65, 300, 700] + [3] * 20
    packs = plan_packs(lengths, PACK_TOKENS, DEFAULT_MAX_SEQUENCES)
    assert [4] in packs and [5] in packs and [6] in packs
    assert max(len(pack) for pack in packs) == DEFAULT_MAX_SEQUENCES  # twenty 3-token inputs: 16, then the rest
    assert all(len(pack) == 1 or sum(lengths[i] for i in pack) <= PACK_TOKENS for pack in packs)


@pytest.mark.parametrize("n_tokens, n_batch", [(1, 512), (512, 512), (513, 512), (1029, 512), (1100, 512), (70, 64)])
def test_pieces_never_end_short(n_tokens, n_batch):
    pieces = split_pieces(n_tokens, n_batch, FA_TILE_ROWS)
    assert pieces[0][0] == 0 and pieces[-1][1] == n_tokens
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert all(0 < end - start <= n_batch for start, end in pieces)
    if len(pieces) > 1:
        assert pieces[-1][1] - pieces[-1][0] >= FA_TILE_ROWS


def test_shared_prefix_is_the_common_token_prefix():
    a, b, c = [1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 3, 4, 7, 7]
    assert shared_prefix_length([a, b, c]) == 3
    assert shared_prefix_length([a, c]) == 4
    assert shared_prefix_length([a]) == 0                       # one input, no hint: nothing shared
    assert shared_prefix_length([a], hint=[1, 2, 3, 4]) == 4
    assert shared_prefix_length([a], hint=[1, 2, 8]) == 2       # a hint never overrides the tokens
    assert shared_prefix_length([a, a, a]) == 4                 # identical: the last token stays own
    assert shared_prefix_length([[1], [1]]) == 0
    assert shared_prefix_length([]) == 0


def test_query_prefix_stops_where_bpe_merges_across_the_boundary(embedder_64):
    """"Query:" + "?" tokenizes as "Query" ":?" — the ":" is not shared with "Query:what"."""
    hint = embedder_64.instruction_prefix("Find passages")
    ids = [embedder_64.tokenize(f"Instruct: Find passages\nQuery:{q}")[0] for q in ("what", "?")]
    n = shared_prefix_length(ids, hint)
    assert ids[0][:n] == ids[1][:n] == hint[:n]
    assert ids[0][n] != ids[1][n]
    assert n == len(hint) - 1


def test_short_decodes_after_a_long_prefix_recompute_its_tail(embedding_gguf_64):
    """With flash attention a decode under FA_TILE_ROWS tokens that attends to more than
    FA_SHORT_SPAN cells takes the prefix's last tokens along; shorter spans keep the saving."""
    model = runtime.LlamaModel(embedding_gguf_64)
    settings = runtime.ContextSettings(pooling=POOLING_LAST, n_ctx=1024, n_batch=512, n_seq_max=4, threads=1,
                                       flash_attn=True)
    context = runtime.PooledContext(model, settings)
    assert context.recomputed_prefix_tokens(0, [5]) == 0
    assert context.recomputed_prefix_tokens(19, [10]) == 0                      # a query's instruction
    assert context.recomputed_prefix_tokens(FA_SHORT_SPAN, [5]) == FA_TILE_ROWS - 5
    assert context.recomputed_prefix_tokens(FA_SHORT_SPAN, [100]) == 0
    assert context.recomputed_prefix_tokens(FA_SHORT_SPAN, [5, 5]) == (FA_TILE_ROWS - 10) // 2
    assert context.recomputed_prefix_tokens(FA_SHORT_SPAN, [600]) == 0          # first piece is full
    context.close()
    no_flash = runtime.PooledContext(model, runtime.ContextSettings(
        pooling=POOLING_LAST, n_ctx=1024, n_batch=512, n_seq_max=4, threads=1, flash_attn=False))
    assert no_flash.recomputed_prefix_tokens(900, [5]) == 0
    no_flash.close()
    model.close()


# --- the runner and its context ------------------------------------------------------------------


def test_context_grows_only_when_needed(embedding_gguf_64):
    model = runtime.LlamaModel(embedding_gguf_64)
    runner = PooledRunner(model, pooling=POOLING_LAST, threads=1)
    rng = np.random.default_rng(0)
    short = [list(rng.integers(100, 1000, 20)) for _ in range(3)]
    runner.run(short)
    first = runner.context
    assert first.settings.n_ctx == MIN_PIECE_TOKENS and first.settings.flash_attn == runner.numerics_for(20).flash_attn
    runner.run(short)
    assert runner.context is first
    runner.run([list(rng.integers(100, 1000, 1500))])
    assert runner.context.settings.n_ctx == 2048
    runner.close()
    model.close()


def sequences_for(embedder: Embedder, texts) -> list[list[int]]:
    return [embedder.tokenize(t)[0] for t in texts]


TEXTS = [
    "short",
    "The quick brown fox jumps over the lazy dog.",
    "Long document. " + " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(120)),
    "混合 mixed 言語 language テキスト text " * 30,
]


@pytest.mark.parametrize("max_sequences, batch_tokens, pack_tokens, flash_attn", [
    (1, 512, 64, True), (16, 512, 64, True), (16, 2048, 2048, True), (1, 512, 64, False), (4, 64, 64, False),
])
def test_results_do_not_depend_on_the_policy(embedder_64, embedding_oracle_64, max_sequences, batch_tokens,
                                             pack_tokens, flash_attn):
    expected = embedding_oracle_64.embed(TEXTS)
    runner = PooledRunner(embedder_64.loaded_model, pooling=POOLING_LAST, threads=1, batch_tokens=batch_tokens,
                          max_sequences=max_sequences, pack_tokens=pack_tokens,
                          numerics=Numerics(EXACT.kv_type, flash_attn))
    got = runner.run(sequences_for(embedder_64, TEXTS))
    runner.close()
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    assert np.min(np.sum(got * expected, axis=1)) >= 0.99999


def test_a_long_input_with_a_short_last_piece_stays_exact(embedding_gguf_256, embedding_oracle_256):
    """1,029 tokens in 512-token pieces: without rebalancing the last piece has 5 tokens and
    flash attention takes its F16 path over 1,024 cells (1 - cosine was 1.1e-4)."""
    text = "word" + " word" * 1027
    with Embedder(embedding_gguf_256, device="cpu") as embedder:
        assert len(embedder.tokenize(text)[0]) == 1029
        got = embedder.encode([text])
    assert float(np.sum(got * embedding_oracle_256.embed([text]))) >= 0.99999


# --- pooling: the final hidden states read here equal llama.cpp's own pooling --------------------


@llama_cpp.ggml_backend_sched_eval_callback
def _watch_nothing(node, ask, user_data):  # noqa: ARG001 - with a callback of its own, llama.cpp pools
    return False


@pytest.mark.parametrize("kind", ["embedding", "reranker"])
def test_pooling_here_matches_llama_cpp(kind, embedding_gguf_64, reranker_tied_gguf):
    path, pooling = (embedding_gguf_64, POOLING_LAST) if kind == "embedding" else (reranker_tied_gguf, POOLING_RANK)
    model = runtime.LlamaModel(path)
    rng = np.random.default_rng(1)
    sequences = [list(rng.integers(100, 1000, n)) for n in (3, 40, 200)]
    settings = runtime.ContextSettings(pooling=pooling, n_ctx=512, n_batch=512, n_seq_max=4, threads=1)
    ours = runtime.PooledContext(model, settings)
    theirs = runtime.PooledContext(model, settings, eval_callback=_watch_nothing)
    assert ours.pools_here and not theirs.pools_here
    for pack in (sequences, sequences[:1], sequences[2:]):
        np.testing.assert_allclose(ours.pooled(pack), theirs.pooled(pack), rtol=0, atol=1e-6)
    ours.close()
    theirs.close()
    model.close()


def test_only_pooled_rows_are_outputs(embedding_gguf_64):
    """No logits are kept for rows nobody pools: a long input's earlier pieces have no outputs,
    its last piece one, a pack one per sequence — and the vectors still equal llama.cpp's pooling."""
    model = runtime.LlamaModel(embedding_gguf_64)
    rng = np.random.default_rng(2)
    long_input = list(rng.integers(100, 1000, 300))
    pack = [list(rng.integers(100, 1000, n)) for n in (5, 9, 20)]
    settings = runtime.ContextSettings(pooling=POOLING_LAST, n_ctx=512, n_batch=128, n_seq_max=4, threads=1)
    ours = runtime.PooledContext(model, settings)
    theirs = runtime.PooledContext(model, settings, eval_callback=_watch_nothing)
    outputs_per_decode = []
    decode = ours._decode

    def counting_decode(pieces, *, keep_rows):
        decode(pieces, keep_rows=keep_rows)
        n_tokens = sum(len(tokens) for _, tokens, _ in pieces)
        outputs_per_decode.append(int(ours._batch.outputs[:n_tokens].sum()))

    ours._decode = counting_decode
    np.testing.assert_allclose(ours.pooled([long_input]), theirs.pooled([long_input]), rtol=0, atol=1e-6)
    assert outputs_per_decode == [0, 0, 1]  # pieces of 128, 108 and 64 tokens
    np.testing.assert_allclose(ours.pooled(pack), theirs.pooled(pack), rtol=0, atol=1e-6)
    assert outputs_per_decode[-1] == 3
    for context in (ours, theirs):
        context.close()
    model.close()
