"""OpTimer: every node of a decode lands in its group, and a profiled decode computes what an unprofiled one does."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3_gguf import runtime
from qwen3_gguf.runtime.batching import PooledRunner
from qwen3_gguf.runtime.op_profile import OpTimer
from qwen3_gguf.runtime.precision import EXACT, FAST

WEIGHT_FAMILIES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
N_LAYERS = 2  # the hidden-256 fixture


@pytest.fixture(scope="module")
def model(embedding_gguf_256):
    return runtime.LlamaModel(embedding_gguf_256)


@pytest.mark.parametrize("numerics, attention", [(EXACT, ["attention Q·K", "attention softmax", "attention ·V"]),
                                                 (FAST, ["attention (flash, fused)"])], ids=["exact", "fast"])
def test_each_layer_part_is_timed_once_per_layer(model, numerics, attention):
    timer = OpTimer()
    tokens = [int(t) for t in np.random.default_rng(0).integers(100, 1000, 300)]
    runner = PooledRunner(model, pooling=runtime.POOLING_LAST, threads=1, numerics=numerics, op_timer=timer)
    profiled = runner.run([tokens])
    plain = PooledRunner(model, pooling=runtime.POOLING_LAST, threads=1, numerics=numerics).run([tokens])
    np.testing.assert_array_equal(profiled, plain)
    for group in [f"matmul {family}" for family in WEIGHT_FAMILIES] + attention:
        assert timer.nodes[group] == N_LAYERS, group
        assert timer.seconds[group] > 0
    assert "attention Q·K" not in timer.nodes or numerics == EXACT
    assert timer.nodes["norms"] >= N_LAYERS * 2  # attention and FFN norms (and their weight products)
    assert timer.nodes["RoPE"] == N_LAYERS * 2   # queries and keys


def test_a_disabled_timer_times_nothing(model):
    timer = OpTimer()
    timer.enabled = False
    runner = PooledRunner(model, pooling=runtime.POOLING_LAST, threads=1, op_timer=timer)
    runner.run([[11, 12, 13]])
    assert not timer.nodes
    timer.enabled = True
    runner.run([[11, 12, 13]])
    assert timer.nodes["matmul ffn_down"] == N_LAYERS
    timer.reset()
    assert not timer.seconds
