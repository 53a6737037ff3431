"""`qwen3-gguf bench`: a throughput table on the user's machine, and one-line errors for bad models."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from qwen3_gguf.cli import cli
from qwen3_gguf.cli.bench import DOCUMENT_TOKENS


def bench(*args):
    return CliRunner().invoke(cli, ["bench", *(str(a) for a in args)])


@pytest.mark.slow
def test_bench_prints_a_table_of_documents_and_queries(embedding_gguf_64):
    result = bench(embedding_gguf_64, "--seconds", 1, "--threads", 1)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "1 threads" in lines[0] and embedding_gguf_64.name in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"documents", "queries"}
    for cells in rows.values():
        assert float(cells[1]) > 0 and int(cells[3]) >= 2  # tokens/s, timed rounds


@pytest.mark.slow
def test_bench_json_counts_the_tokens_the_model_sees(embedding_gguf_64):
    from qwen3_gguf import Embedder
    from qwen3_gguf.prompts import DEFAULT_INSTRUCTION, query_text

    result = bench(embedding_gguf_64, "--seconds", 1, "--threads", 1, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["threads"] == 1 and report["device"] == "auto"
    documents, queries = report["documents"], report["queries"]
    # Documents are cut to the chunk size, EOS included; no more, and not much less.
    assert DOCUMENT_TOKENS - 8 <= documents["tokens_per_text"] <= DOCUMENT_TOKENS
    assert documents["rounds"] >= 2 and queries["rounds"] >= 2
    # A query's tokens include the instruction written in front of it.
    with Embedder(embedding_gguf_64, threads=1) as embedder:
        instruction_tokens = len(embedder.tokenize(query_text("", DEFAULT_INSTRUCTION))[0])
    assert queries["tokens_per_text"] > instruction_tokens
    # texts/s and tokens/s describe the same rounds.
    ratio = queries["tokens_per_s"] / (queries["texts_per_s"] * queries["tokens_per_text"])
    assert ratio == pytest.approx(1, rel=1e-6)


def test_bench_missing_model_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "nowhere.gguf"
    result = bench(missing)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "nowhere.gguf" in result.stderr


def test_bench_not_a_gguf_is_one_line_exit_2(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    result = bench(text)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "notes.gguf" in result.stderr


@pytest.mark.slow
def test_bench_refuses_a_reranker(reranker_tied_gguf):
    result = bench(reranker_tied_gguf, "--seconds", 1)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "reranker" in result.stderr
