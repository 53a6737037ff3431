"""The model catalog: names resolve through huggingface_hub's cache; misses say how to fetch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hub_cache import offline_hub
from huggingface_hub import try_to_load_from_cache

from qwen3_gguf import Embedder, Reranker
from qwen3_gguf.catalog import load_catalog, lookup, resolve_model
from qwen3_gguf.cli import cli

EMBEDDING_REPO, EMBEDDING_Q8 = "Qwen/Qwen3-Embedding-0.6B-GGUF", "Qwen3-Embedding-0.6B-Q8_0.gguf"


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    return offline_hub(monkeypatch, tmp_path / "hf" / "hub")


def test_catalog_describes_six_models():
    models = load_catalog()
    assert sorted(models) == sorted(f"qwen3-{kind}-{size}" for kind in ("embedding", "reranker")
                                    for size in ("0.6b", "4b", "8b"))
    assert [models[f"qwen3-embedding-{s}"].dimension for s in ("0.6b", "4b", "8b")] == [1024, 2560, 4096]
    assert models["qwen3-embedding-0.6b"].mrl_min_dimension == 32
    entry = lookup("Qwen3-Embedding-4B:Q4_K_M")
    assert (entry.gguf.repo, entry.gguf.file) == ("Qwen/Qwen3-Embedding-4B-GGUF", "Qwen3-Embedding-4B-Q4_K_M.gguf")
    assert lookup("qwen3-embedding-0.6b").quant == "q8_0"


def test_a_name_resolves_through_the_hub_cache(hub, embedding_gguf_64, embedder_64):
    snapshot = hub.add(EMBEDDING_REPO, EMBEDDING_Q8, embedding_gguf_64)
    resolved = resolve_model("qwen3-embedding-0.6b", "embedding")
    assert resolved == Path(try_to_load_from_cache(EMBEDDING_REPO, EMBEDDING_Q8)) == snapshot
    with Embedder("qwen3-embedding-0.6b:q8_0", device="cpu") as embedder:
        np.testing.assert_array_equal(embedder.encode(["named"]), embedder_64.encode(["named"]))


def test_embed_defaults_to_the_catalog_model(hub, embedding_gguf_64, embedder_64):
    hub.add(EMBEDDING_REPO, EMBEDDING_Q8, embedding_gguf_64)
    result = run("embed", "catalog default")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(json.loads(result.stdout)["embedding"], embedder_64.encode("catalog default"), atol=1e-6)


def test_reranker_by_name(hub, reranker_tied_gguf):
    hub.add("ggml-org/Qwen3-Reranker-0.6B-Q8_0-GGUF", "qwen3-reranker-0.6b-q8_0.gguf", reranker_tied_gguf)
    with (Reranker("qwen3-reranker-0.6b", device="cpu") as by_name,
          Reranker(reranker_tied_gguf, device="cpu") as by_path):
        assert by_name.model_file.path.name == "qwen3-reranker-0.6b-q8_0.gguf"
        documents = ["a doc", "another"]
        np.testing.assert_array_equal(by_name.score("q", documents), by_path.score("q", documents))


def test_offline_cache_miss_says_what_to_fetch(hub):
    result = run("embed", "hello")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output
    assert message.startswith(f"Error: qwen3-embedding-0.6b:q8_0 ({EMBEDDING_Q8} from {EMBEDDING_REPO}) "
                              "is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE=1" in message and str(hub.root) in message
    assert "qwen3-gguf models --download qwen3-embedding-0.6b:q8_0" in message
    assert f"hf download {EMBEDDING_REPO} {EMBEDDING_Q8}" in message
    download = run("models", "--download", "qwen3-embedding-4b:q4_k_m")
    assert download.exit_code == 2
    assert "Qwen3-Embedding-4B-Q4_K_M.gguf from Qwen/Qwen3-Embedding-4B-GGUF) is not in the Hugging Face cache" \
        in download.stderr


@pytest.mark.parametrize("args, message", [
    (["embed", "-m", "qwen3-embeding-0.6b", "x"],
     "Error: 'qwen3-embeding-0.6b' is neither a GGUF file nor a model in the catalog (known: qwen3-embedding-0.6b, "
     "qwen3-embedding-4b, qwen3-embedding-8b); see qwen3-gguf models"),
    (["embed", "-m", "qwen3-embedding-0.6b:q2_k", "x"],
     "Error: qwen3-embedding-0.6b has no q2_k GGUF in the catalog; available: q8_0, f16"),
    (["rerank", "-m", "qwen3-embedding-0.6b", "-q", "q", "d"],
     "Error: qwen3-embedding-0.6b is an embedding model, not a reranker"),
    (["rerank", "-m", "qwen3-reranker-4b", "-q", "q", "d"],
     "Error: no published GGUF of qwen3-reranker-4b is known; convert its checkpoint"),
])
def test_bad_names(hub, args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_models_lists_the_catalog_and_what_is_cached(hub, embedding_gguf_64):
    hub.add("Qwen/Qwen3-Embedding-4B-GGUF", "Qwen3-Embedding-4B-Q6_K.gguf", embedding_gguf_64)
    result = run("models")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    size_mib = embedding_gguf_64.stat().st_size / 2**20
    assert lines["qwen3-embedding-4b:q6_k"].split()[-3:] == ["cached", f"{size_mib:.1f}", "MiB"]
    assert lines["qwen3-embedding-4b:q4_k_m"].split()[-1] == "-"
    assert "(default)" in lines["qwen3-embedding-0.6b:q8_0"]
    assert lines["qwen3-reranker-8b"].endswith("no published GGUF; convert Qwen/Qwen3-Reranker-8B")
    assert len(lines) == sum(max(1, len(m.quants)) for m in load_catalog().values())
