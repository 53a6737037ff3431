"""On llama.cpp builds with AMX, the weights llama.cpp repacks are placed in CPU_REPACK by name.

The AMX switch (runtime/amx.py) turns off all of llama.cpp's extra buffer types; the overrides put
back the repacked 4-bit kernels. These tests force the AMX branch on any x86 machine (CPU_REPACK
exists on every x86 build with AVX2), so they run where CI runs, AMX or not.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_embed import TEXTS

from qwen3_gguf import Embedder
from qwen3_gguf.gguf_file import read_header
from qwen3_gguf.quantization import plan_quantization, quantize
from qwen3_gguf.runtime import amx, model


@pytest.fixture(scope="module")
def q4_0_gguf(embedding_gguf_256, tmp_path_factory):
    """The hidden-256 model at Q4_0: its layer weights repack, its Q6_K output head does not."""
    out = tmp_path_factory.mktemp("placement") / "q4_0.gguf"
    quantize(plan_quantization(embedding_gguf_256, "Q4_0"), out, threads=2)
    return out


@pytest.fixture
def as_if_built_with_amx(monkeypatch):
    monkeypatch.setattr(amx, "built_with_amx", lambda: True)
    monkeypatch.setattr(model, "built_with_amx", lambda: True)


def test_patterns_name_exactly_the_weights_llama_cpp_repacks(q4_0_gguf):
    tensors = read_header(q4_0_gguf).tensors
    patterns = [re.compile(p) for p in amx.repack_patterns(q4_0_gguf)]
    matched = {t.name for t in tensors if any(p.search(t.name) for p in patterns)}
    expected = {t.name for t in tensors
                if t.name.startswith("blk.") and t.type in amx.X86_REPACKED_TYPES and t.shape[1] % 8 == 0}
    assert matched == expected
    assert len(expected) == 7 * 2  # 7 matrices a layer, 2 layers in this fixture
    assert "token_embd.weight" not in matched  # read by GET_ROWS, which CPU_REPACK does not serve


def test_no_overrides_for_exact_files_or_without_amx(embedding_gguf_256, q4_0_gguf, as_if_built_with_amx,
                                                     monkeypatch):
    assert amx.repack_patterns(embedding_gguf_256) == []
    assert amx.repack_overrides(embedding_gguf_256) is None
    assert amx.repack_overrides(q4_0_gguf) is not None
    monkeypatch.setattr(amx, "built_with_amx", lambda: False)
    assert amx.repack_overrides(q4_0_gguf) is None


def test_repacking_adds_under_a_tenth_of_the_files_own_error(embedding_gguf_256, q4_0_gguf, as_if_built_with_amx,
                                                             monkeypatch):
    """The repacked kernels round the inputs in their own blocks, so their results are not the plain
    kernels' bit for bit; the engine's budget for a quantized file (issue 12) is a tenth of the
    file's own quantization error, measured here against the F32 file it was made from."""
    loads = []
    load = model.llama.llama_model_load_from_file

    def recording_load(path, params):
        loads.append(params.tensor_buft_overrides)
        return load(path, params)

    monkeypatch.setattr(model.llama, "llama_model_load_from_file", recording_load)
    with Embedder(q4_0_gguf, device="cpu") as embedder:
        repacked = embedder.encode(TEXTS)
    monkeypatch.setattr(model, "repack_overrides", lambda path: None)
    with Embedder(q4_0_gguf, device="cpu") as embedder:
        plain = embedder.encode(TEXTS)
    with Embedder(embedding_gguf_256, device="cpu") as embedder:
        exact = embedder.encode(TEXTS)
    assert loads[0] and not loads[1] and not loads[2]  # overrides given for the Q4_0 file only once
    own_error = 1 - np.sum(plain * exact, axis=1)
    added_error = 1 - np.sum(repacked * plain, axis=1)
    assert np.max(added_error) > 0  # the kernels really differ: this test can see a placement change
    assert np.max(added_error / own_error) < 0.1
