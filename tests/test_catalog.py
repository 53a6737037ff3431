"""The model catalog: names resolve through huggingface_hub's cache (published GGUFs, hf://
references) or the build cache; misses say how to fetch; bad names list close matches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hub_cache import offline_hub
from huggingface_hub import try_to_load_from_cache

from qwen3_gguf import Embedder, Reranker
from qwen3_gguf.catalog import NotBuilt, build_cache_dir, load_catalog, lookup, resolve_model
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
    assert models["qwen3-reranker-8b"].source == "Qwen/Qwen3-Reranker-8B"
    entry = lookup("Qwen3-Embedding-4B:Q4_K_M")
    assert (entry.published.repo, entry.published.file) == ("Qwen/Qwen3-Embedding-4B-GGUF",
                                                            "Qwen3-Embedding-4B-Q4_K_M.gguf")
    assert lookup("qwen3-embedding-0.6b").spec == "qwen3-embedding-0.6b:q8_0"
    assert lookup("qwen3-embedding-4b:q4_k_m+llama-default").published == entry.published  # the type's own choice


@pytest.mark.parametrize("name, spec", [
    ("qwen3-reranker-4b", "qwen3-reranker-4b:q8_0"),                           # nothing published at all
    ("qwen3-embedding-4b:q4_k_m+bump-edges", "qwen3-embedding-4b:q4_k_m+bump-edges"),  # published type, a recipe
    ("QWEN3-Embedding-8B:IQ4_XS", "qwen3-embedding-8b:iq4_xs"),               # a type nobody published
    ("qwen3-embedding-4b:bf16_q8_0", "qwen3-embedding-4b:bf16_q8_0"),          # a hybrid
])
def test_names_without_a_published_gguf_are_builds(name, spec, monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN3_GGUF_BUILD_CACHE", str(tmp_path / "builds"))
    entry = lookup(name)
    assert entry.spec == spec and entry.published is None
    with pytest.raises(NotBuilt, match=f"^{spec.replace('+', '[+]')} has no published GGUF and is not built yet; "
                                       f"build it with: qwen3-gguf models --build "):
        resolve_model(name, entry.model.kind)


def test_the_build_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("QWEN3_GGUF_BUILD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_cache_dir() == tmp_path / "xdg" / "qwen3-gguf" / "builds"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build_cache_dir() == Path.home() / ".cache" / "qwen3-gguf" / "builds"
    monkeypatch.setenv("QWEN3_GGUF_BUILD_CACHE", "~/builds")
    assert build_cache_dir() == Path.home() / "builds"


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


def test_hf_references_resolve_through_the_hub_cache(hub, embedding_gguf_64, embedder_64):
    hub.add("someone/Community-GGUF", "Qwen3-Embedding-Q4_K_M-bumped.gguf", embedding_gguf_64)
    result = run("embed", "-m", "hf://someone/Community-GGUF/Qwen3-Embedding-Q4_K_M-bumped.gguf", "community")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(json.loads(result.stdout)["embedding"], embedder_64.encode("community"), atol=1e-6)
    missing = run("embed", "-m", "hf://someone/Community-GGUF/other.gguf", "x")
    assert missing.exit_code == 2
    assert missing.stderr.startswith("Error: hf://someone/Community-GGUF/other.gguf is not in the Hugging Face cache")
    assert missing.stderr.endswith("(or: hf download someone/Community-GGUF other.gguf)\n")


KNOWN_EMBEDDING = "known: qwen3-embedding-0.6b, qwen3-embedding-4b, qwen3-embedding-8b"


@pytest.mark.parametrize("args, message", [
    (["embed", "-m", "qwen3-embeding-0.6b", "x"],
     "Error: 'qwen3-embeding-0.6b' is neither a GGUF file nor a model in the catalog (did you mean "
     f"qwen3-embedding-0.6b? {KNOWN_EMBEDDING}); see qwen3-gguf models\n"),
    (["embed", "-m", "qwen3-embedding-0.6b:q4_k_mm", "x"],
     "Error: qwen3-embedding-0.6b:q4_k_mm: 'q4_k_mm' is not a llama.cpp type (did you mean q4_k_m? valid: "),
    (["embed", "-m", "qwen3-embedding-0.6b:q4_k_m+bump-edge", "x"],
     "Error: qwen3-embedding-0.6b:q4_k_m+bump-edge: no recipe 'bump-edge' (did you mean bump-edges? shipped: "),
    (["embed", "-m", "qwen3-embedding-0.6b:q8_0+hybrid", "x"],
     "Error: recipe 'hybrid' keeps tensors at a hybrid's precision; ask for a hybrid type such as "
     "qwen3-embedding-0.6b:bf16_q8_0+hybrid\n"),
    (["rerank", "-m", "qwen3-embedding-0.6b", "-q", "q", "d"],
     "Error: qwen3-embedding-0.6b is an embedding model, not a reranker\n"),
    (["rerank", "-m", "qwen3-reranker-4b", "-q", "q", "d"],
     "Error: the checkpoint Qwen/Qwen3-Reranker-4B is not in the Hugging Face cache ({cache}) and offline mode is "
     "on (HF_HUB_OFFLINE=1); fetch it with: qwen3-gguf models --build qwen3-reranker-4b:q8_0 "
     "(or: hf download Qwen/Qwen3-Reranker-4B)\n"),
    (["models", "--download", "qwen3-reranker-4b:q4_k_m"],
     "Error: qwen3-reranker-4b:q4_k_m has no published GGUF; build it with: "
     "qwen3-gguf models --build qwen3-reranker-4b:q4_k_m\n"),
    (["models", "--build", "qwen3-embedding-0.6b:q8_0"],
     "Error: qwen3-embedding-0.6b:q8_0 is published (Qwen3-Embedding-0.6B-Q8_0.gguf in "
     "Qwen/Qwen3-Embedding-0.6B-GGUF); "
     "fetch it with: qwen3-gguf models --download qwen3-embedding-0.6b:q8_0\n"),
    (["models", "--imatrix-chunks", "3"], "Error: --imatrix-chunks applies to --build only\n"),
    (["models", "--build", "qwen3-reranker-4b", "--remove", "qwen3-reranker-4b"],
     "Error: give one of --download, --build and --remove at a time\n"),
    (["models", "--remove", "qwen3-embedding-0.6b:q8_0"],
     "Error: qwen3-embedding-0.6b:q8_0 is a published GGUF, not a build; it lives in the Hugging Face cache "
     "(delete it with: hf cache delete)\n"),
])
def test_bad_names_say_what_is_wrong_before_any_work(hub, args, message, monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN3_GGUF_BUILD_CACHE", str(tmp_path / "builds"))
    result = run(*args)
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(message.format(cache=hub.root))
    assert not (tmp_path / "builds").exists() or not list((tmp_path / "builds").rglob("*.gguf"))


def test_models_lists_the_catalog_and_what_is_cached(hub, embedding_gguf_64, monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN3_GGUF_BUILD_CACHE", str(tmp_path / "builds"))
    hub.add("Qwen/Qwen3-Embedding-4B-GGUF", "Qwen3-Embedding-4B-Q6_K.gguf", embedding_gguf_64)
    result = run("models")
    assert result.exit_code == 0, result.output
    table, footer = result.stdout.split("\n\n")
    head, *lines = table.splitlines()
    assert head.split() == ["name", "kind", "dim", "status", "size", "when"]
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    size_mib = embedding_gguf_64.stat().st_size / 2**20
    assert rows["qwen3-embedding-4b:q6_k"][:5] == ["embedding", "2560", "cached", f"{size_mib:.1f}", "MiB"]
    assert rows["qwen3-embedding-4b:q4_k_m"] == ["embedding", "2560", "-", "-", "-"]
    assert rows["qwen3-embedding-0.6b:q8_0"][-1] == "(default)"
    assert rows["qwen3-reranker-8b:q8_0"] == ["reranker", "4096", "to-build", "-", "-", "(default)"]
    assert len(rows) == sum(max(1, len(m.quants)) for m in load_catalog().values())
    assert footer == (f"Any other MODEL:TYPE[+RECIPE] is built on first use (or with --build) in "
                      f"{tmp_path / 'builds'}.\n")
