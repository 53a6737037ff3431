"""The qwen3-gguf command line, through click's runner and as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFWriter

from qwen3_gguf import Embedder
from qwen3_gguf.cli import cli
from qwen3_gguf.embed import TruncationWarning


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def jsonl(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


# --- embed -------------------------------------------------------------------------------------


def test_embed_arguments_print_one_json_object_per_text(embedding_gguf_64, embedding_oracle_64):
    texts = ["first text", "второй текст", "第三个文本"]
    result = run("embed", "-m", embedding_gguf_64, *texts)
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["text"] for r in records] == texts
    assert [r["index"] for r in records] == [0, 1, 2]
    vectors = np.array([r["embedding"] for r in records], dtype=np.float32)
    assert vectors.shape == (3, 64) and all(r["dim"] == 64 for r in records)
    assert np.min(np.sum(vectors * embedding_oracle_64.embed(texts), axis=1)) >= 0.99999


def test_embed_stdin_lines_as_queries_with_dim(embedding_gguf_64, embedder_64):
    result = run("embed", "-m", embedding_gguf_64, "--query", "--dim", 32, input="alpha\n\nbeta\n")
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["text"] for r in records] == ["alpha", "beta"]
    expected = embedder_64.encode(["alpha", "beta"], prompt_name="query", dim=32)
    np.testing.assert_allclose([r["embedding"] for r in records], expected, atol=1e-6)


def test_embed_instruction(embedding_gguf_64, embedder_64):
    result = run("embed", "-m", embedding_gguf_64, "--instruction", "Find code", "sort a list")
    assert result.exit_code == 0, result.output
    expected = embedder_64.encode("sort a list", instruction="Find code")
    np.testing.assert_allclose(jsonl(result.stdout)[0]["embedding"], expected, atol=1e-6)


def test_embed_long_text_warns_about_truncation(embedding_gguf_64):
    result = run("embed", "-m", embedding_gguf_64, "--max-tokens", 16, "word " * 100)
    assert result.exit_code == 0, result.output
    assert "Warning: 1 of 1 texts were longer than 16 tokens and were truncated" in result.stderr
    refused = run("embed", "-m", embedding_gguf_64, "--max-tokens", 16, "--no-truncate", "word " * 100)
    assert refused.exit_code == 2
    assert "Error: text #0 is longer than 16 tokens (truncation is off)" in refused.stderr


# --- rerank ------------------------------------------------------------------------------------


def test_rerank_table_and_json(reranker_tied_gguf, reranker_tied):
    docs = ["Paris is in France.", "Bananas are yellow.", "The Louvre is in Paris."]
    expected = reranker_tied.rank("Where is Paris?", docs)
    table = run("rerank", "-m", reranker_tied_gguf, "-q", "Where is Paris?", *docs)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "index", "document"]
    assert [int(line.split()[2]) for line in lines[1:]] == [r.index for r in expected]
    as_json = run("rerank", "-m", reranker_tied_gguf, "-q", "Where is Paris?", "--json", "-k", 2, *docs)
    records = jsonl(as_json.stdout)
    assert [r["index"] for r in records] == [r.index for r in expected[:2]]
    assert records[0]["score"] == pytest.approx(expected[0].score, abs=1e-6)


def test_rerank_documents_from_stdin(reranker_tied_gguf):
    result = run("rerank", "-m", reranker_tied_gguf, "-q", "q", "--json", input="doc one\ndoc two\n")
    assert result.exit_code == 0, result.output
    assert sorted(r["text"] for r in jsonl(result.stdout)) == ["doc one", "doc two"]


# --- info --------------------------------------------------------------------------------------


def test_info_describes_an_embedding_model(embedding_gguf_64):
    result = run("info", embedding_gguf_64)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "kind                 embedding" in text
    assert "embedding length     64" in text
    assert "layers               2" in text
    assert "pooling              last" in text
    assert "appends <|endoftext|>" in text
    assert "F32 ×24" in text


def test_info_json_for_a_reranker(reranker_untied_gguf):
    result = run("info", "--json", reranker_untied_gguf)
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["kind"] == "reranker" and facts["pooling"] == "rank"
    assert facts["tensor types"] == {"F32": 25}
    assert facts["bits per weight"] == pytest.approx(32.0)


def test_info_on_an_old_style_file_explains_the_eos_fallback(old_style_embedding_gguf_64):
    result = run("info", old_style_embedding_gguf_64)
    assert "not set (the runtime pools the last token)" in result.stdout
    assert "the runtime appends <|endoftext|> itself" in result.stdout


# --- bad input: one line, exit code 2 ------------------------------------------------------------


def _truncated_copy(src, dst, keep_fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def _llama_arch_gguf(path):
    writer = GGUFWriter(path, arch="llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("command", ["embed", "rerank", "info"])
def test_missing_model_file(command, tmp_path):
    args = {"embed": ["embed", "-m", tmp_path / "nope.gguf", "x"],
            "rerank": ["rerank", "-m", tmp_path / "nope.gguf", "-q", "q", "d"],
            "info": ["info", tmp_path / "nope.gguf"]}[command]
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: model file not found: {tmp_path / 'nope.gguf'}"


def test_bad_model_files(embedding_gguf_64, tmp_path):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("just some text, long enough to be more than a header\n")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    cases = {
        not_gguf: "is not a GGUF file (it does not start with 'GGUF')",
        empty: "is not a GGUF file (only 0 bytes)",
        _truncated_copy(embedding_gguf_64, tmp_path / "half.gguf", 0.5): "is a corrupted or truncated GGUF: tensor",
        _truncated_copy(embedding_gguf_64, tmp_path / "head.gguf", 0.01):
            "is a corrupted or truncated GGUF: string array length",
        _llama_arch_gguf(tmp_path / "llama.gguf"):
            "is a 'llama' model; qwen3-gguf runs Qwen3 embedding and reranker GGUFs only",
        tmp_path: "is a folder; give the path of a .gguf file",
    }
    for path, message in cases.items():
        for args in (["embed", "-m", path, "x"], ["info", path]):
            result = run(*args)
            assert result.exit_code == 2, (path, result.output)
            assert message in result.stderr, (path, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
            assert "Traceback" not in result.output


def test_wrong_model_kind(embedding_gguf_64, reranker_tied_gguf):
    result = run("rerank", "-m", embedding_gguf_64, "-q", "q", "doc")
    assert result.exit_code == 2
    assert "is an embedding model, not a reranker; use qwen3-gguf embed" in result.stderr
    result = run("embed", "-m", reranker_tied_gguf, "text")
    assert result.exit_code == 2
    assert "is a reranker, not an embedding model; use qwen3-gguf rerank" in result.stderr


@pytest.mark.parametrize("dim", [16, 65])
def test_dim_out_of_range(embedding_gguf_64, dim):
    result = run("embed", "-m", embedding_gguf_64, "--dim", dim, "text")
    assert result.exit_code == 2
    assert f"Error: --dim {dim} is outside 32…64" in result.stderr


def test_empty_text_and_empty_stdin(embedding_gguf_64):
    result = run("embed", "-m", embedding_gguf_64, "")
    assert result.exit_code == 2 and "Error: text #0 is empty" in result.stderr
    result = run("embed", "-m", embedding_gguf_64, input="\n\n")
    assert result.exit_code == 2 and "Error: stdin held no text" in result.stderr


def test_empty_query(reranker_tied_gguf):
    result = run("rerank", "-m", reranker_tied_gguf, "-q", "", "doc")
    assert result.exit_code == 2 and "Error: the query is empty" in result.stderr


def test_verbose_shows_the_traceback(tmp_path):
    result = run("--verbose", "info", tmp_path / "nope.gguf")
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception) and "model file not found" in str(result.exception)


def test_gpu_device_without_gpu_build(embedding_gguf_64):
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has a GPU backend; the refusal cannot happen here")
    result = run("embed", "-m", embedding_gguf_64, "--device", "gpu", "x")
    assert result.exit_code == 2
    assert "this llama-cpp-python build has no GPU backend" in result.stderr


# --- convert -----------------------------------------------------------------------------------


def test_convert_then_embed(embedding_ckpt_64, embedding_oracle_64, tmp_path):
    out = tmp_path / "model.gguf"
    result = run("convert", embedding_ckpt_64, "-o", out, "--outtype", "f32")
    assert result.exit_code == 0, result.output
    assert "embedding model (README.md title" in result.stderr
    assert f"wrote {out}" in result.stderr
    with Embedder(out, device="cpu") as embedder:
        got = embedder.encode(["hello"])
    assert float(got[0] @ embedding_oracle_64.embed(["hello"])[0]) >= 0.99999


def test_convert_reports_the_reranker_kind(reranker_untied_ckpt, tmp_path):
    result = run("convert", reranker_untied_ckpt, "-o", tmp_path / "r.gguf", "--outtype", "f16")
    assert result.exit_code == 0, result.output
    assert "reranker model (README.md title" in result.stderr


def test_convert_bad_inputs(embedding_ckpt_64, tmp_path):
    missing = run("convert", tmp_path / "nowhere", "-o", tmp_path / "x.gguf")
    assert missing.exit_code == 2 and "nowhere" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    shutil.copytree(embedding_ckpt_64, broken)
    (broken / "tokenizer.json").unlink()
    result = run("convert", broken, "-o", tmp_path / "x.gguf", "--kind", "embedding")
    assert result.exit_code == 2 and "tokenizer.json" in result.stderr
    bad_type = run("convert", embedding_ckpt_64, "-o", tmp_path / "x.gguf", "--outtype", "q4_0")
    assert bad_type.exit_code == 2 and "'q4_0' is not one of 'f32', 'f16', 'bf16', 'q8_0'" in bad_type.stderr
    assert not (tmp_path / "x.gguf").exists()


# --- the installed console script ----------------------------------------------------------------


def test_console_script_runs_as_a_process(embedding_gguf_64, tmp_path):
    exe = shutil.which("qwen3-gguf", path=os.path.dirname(sys.executable)) or shutil.which("qwen3-gguf")
    assert exe, "the qwen3-gguf console script is not installed"
    ok = subprocess.run([exe, "embed", "-m", str(embedding_gguf_64), "hello"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["embedding"]) == 64
    assert ok.stderr == ""  # llama.cpp's log is silenced
    bad = subprocess.run([exe, "info", str(tmp_path / "missing.gguf")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr == f"Error: model file not found: {tmp_path / 'missing.gguf'}\n"
    loud = subprocess.run([exe, "-v", "embed", "-m", str(embedding_gguf_64), "hello"],
                          capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0 and "llama" in loud.stderr  # the log comes back with --verbose


def test_a_forty_thousand_token_document(embedding_gguf_64):
    """A huge input is tokenized whole, then cut to --max-tokens keeping the EOS (or refused)."""
    document = " ".join(f"w{i % 10}" for i in range(20_000))  # " w" and one digit: two tokens a word
    with Embedder(embedding_gguf_64, device="cpu", max_tokens=1024) as embedder:
        assert len(embedder.loaded_model.tokenize(document, special=False)) == 40_000
        ids, truncated = embedder.tokenize(document)
        assert truncated and len(ids) == 1024 and ids[-1] == 151643
        with pytest.warns(TruncationWarning):
            expected = embedder.encode(document)
    result = run("embed", "-m", embedding_gguf_64, "--max-tokens", 1024, document)
    assert result.exit_code == 0, result.output
    assert "Warning: 1 of 1 texts were longer than 1024 tokens and were truncated" in result.stderr
    np.testing.assert_allclose(jsonl(result.stdout)[0]["embedding"], expected, atol=1e-6)
    refused = run("embed", "-m", embedding_gguf_64, "--max-tokens", 1024, "--no-truncate", document)
    assert refused.exit_code == 2
    assert "Error: text #0 is longer than 1024 tokens (truncation is off)" in refused.stderr
