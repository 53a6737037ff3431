"""`qwen3-gguf bench`: a throughput table on the user's machine, and one-line errors for bad models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from qwen3_gguf.cli import cli
from qwen3_gguf.quantization.bench import DOCUMENT_TOKENS


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


# --- bench --types: the table, the choice, the files ------------------------------------------------------------


def _row(type_name, docs, queries, mean, *, is_source=False, measure="cosine"):
    from qwen3_gguf.quantization.bench import Throughput, TypeRow

    def speed(tokens_per_s):
        return Throughput(tokens_per_s=tokens_per_s, texts_per_s=1.0, rounds=3, tokens_per_text=100)

    worst = mean - 0.01 if measure == "cosine" else mean + 0.01
    return TypeRow(type_name=type_name, path=f"/work/{type_name}.gguf", is_source=is_source, size_bytes=2**20,
                   bits_per_weight=8.5, numerics={"documents": "kv-f32 no-fa", "queries": "kv-f32 no-fa"},
                   speeds={"documents": speed(docs), "queries": speed(queries)}, fidelity_measure=measure,
                   fidelity_mean=mean, fidelity_worst=worst)


MEASURED = [_row("F32", 80, 300, 1.0, is_source=True), _row("Q8_0", 95, 290, 0.9995),
            _row("Q4_K_M", 120, 410, 0.991), _row("Q2_K", 150, 380, 0.93)]


def _cosine_floor(value):
    from qwen3_gguf.quantization.bench import COSINE, Floor

    return Floor(COSINE, value)


def test_the_fastest_file_meeting_the_floor_is_chosen():
    from qwen3_gguf.quantization.bench import choice_line, fastest_meeting

    assert fastest_meeting(MEASURED, _cosine_floor(0.99)).type_name == "Q4_K_M"  # Q2_K is faster, below the floor
    assert fastest_meeting(MEASURED, _cosine_floor(0.9)).type_name == "Q2_K"
    assert fastest_meeting(MEASURED, _cosine_floor(0.999)).type_name == "Q8_0"
    assert fastest_meeting(MEASURED, _cosine_floor(0.99), "queries").type_name == "Q4_K_M"
    assert fastest_meeting(MEASURED, _cosine_floor(0.999), "queries").type_name == "F32"  # the source is a file too
    line = choice_line(MEASURED, _cosine_floor(0.99))
    assert line.startswith("fastest documents at mean cosine >= 0.99: Q4_K_M (120.0 tokens/s")
    assert line.endswith(" /work/Q4_K_M.gguf")


def test_a_reranker_floor_is_a_ceiling_on_delta_p():
    from qwen3_gguf.quantization.bench import DELTA_P, Floor, choice_line, fastest_meeting

    rows = [_row("F16", 80, 0, 0.0, is_source=True, measure=DELTA_P), _row("Q8_0", 95, 0, 0.002, measure=DELTA_P),
            _row("Q4_K_M", 120, 0, 0.03, measure=DELTA_P)]
    assert fastest_meeting(rows, Floor(DELTA_P, 0.01)).type_name == "Q8_0"
    assert fastest_meeting(rows, Floor(DELTA_P, 0.05)).type_name == "Q4_K_M"
    assert fastest_meeting(rows, Floor(DELTA_P, 0.001)).type_name == "F16"
    assert fastest_meeting(rows[1:], Floor(DELTA_P, 0.001)) is None
    assert choice_line(rows[1:], Floor(DELTA_P, 0.001)).startswith(
        "no file reaches mean |dP(yes)| <= 0.001 (the closest: Q8_0 at 0.00200)")


def test_no_file_meeting_the_floor_is_one_clear_line():
    from qwen3_gguf.quantization.bench import choice_line, fastest_meeting

    quants = MEASURED[1:]
    assert fastest_meeting(quants, _cosine_floor(0.9999)) is None
    line = choice_line(quants, _cosine_floor(0.9999))
    assert line.startswith("no file reaches mean cosine >= 0.9999 (the closest: Q8_0 at 0.99950)")
    assert "\n" not in line


def test_the_table_marks_the_source_and_prints_every_measure():
    from qwen3_gguf.quantization.bench import format_table

    header, *lines = format_table(MEASURED)
    assert header.split()[:3] == ["type", "MiB", "bpw"]
    assert [line.split()[0] for line in lines] == ["F32*", "Q8_0", "Q4_K_M", "Q2_K"]
    cells = lines[2].split()
    assert cells[1:3] == ["1.0", "8.50"] and cells[-4:] == ["120.0", "410.0", "0.99100", "0.98100"]


def test_type_names_expand_stock_and_skip_the_source_type():
    from types import SimpleNamespace

    from qwen3_gguf.errors import UserError
    from qwen3_gguf.quantization.bench import STOCK_TYPES, type_names

    f16_source = SimpleNamespace(file_type="F16")
    assert type_names("all", f16_source) == [t for t in STOCK_TYPES if t != "F16"]
    assert type_names("stock", SimpleNamespace(file_type="ALL_F32")) == list(STOCK_TYPES)
    assert type_names("q4_k,Q4_K_M,f16,bf16_q8_0", f16_source) == ["Q4_K_M", "bf16_q8_0"]
    with pytest.raises(UserError, match="unknown quantization type 'q9_z'"):
        type_names("q8_0,q9_z", f16_source)


def test_numerics_follow_the_policy_at_the_measured_lengths():
    from types import SimpleNamespace

    from gguf import LlamaFileType

    from qwen3_gguf.quantization.bench import COSINE, DELTA_P, Throughput, type_row
    from qwen3_gguf.runtime.precision import EMBEDDING, EXACT, FAST, RERANKER

    def speed(tokens_per_text):
        return Throughput(tokens_per_s=1.0, texts_per_s=1.0, rounds=2, tokens_per_text=tokens_per_text)

    model = SimpleNamespace(path="q4.gguf", file_size=2**20, bits_per_weight=4.8)
    speeds = {"documents": speed(511), "queries": speed(29)}
    row = type_row("Q4_K_M", model, LlamaFileType.MOSTLY_Q4_K_M, kind=EMBEDDING, is_source=False, speeds=speeds,
                   fidelity_measure=COSINE, fidelity=np.array([0.99, 0.97]))
    assert row.numerics == {"documents": FAST.short, "queries": EXACT.short}
    assert (row.fidelity_mean, row.fidelity_worst) == (pytest.approx(0.98), pytest.approx(0.97))
    exact = type_row("F16", model, LlamaFileType.MOSTLY_F16, kind=EMBEDDING, is_source=True, speeds=speeds,
                     fidelity_measure=COSINE, fidelity=np.ones(2))
    assert exact.numerics == {"documents": EXACT.short, "queries": EXACT.short}
    reranker = type_row("Q4_K_M", model, LlamaFileType.MOSTLY_Q4_K_M, kind=RERANKER, is_source=False,
                        speeds={"documents": speed(511)}, fidelity_measure=DELTA_P, fidelity=np.array([0.01, 0.03]))
    assert reranker.numerics == {"documents": FAST.short}       # Q4_K_M rerankers run long prompts fast too
    reranker_q8 = type_row("Q8_0", model, LlamaFileType.MOSTLY_Q8_0, kind=RERANKER, is_source=False,
                           speeds={"documents": speed(511)}, fidelity_measure=DELTA_P, fidelity=np.array([0.01]))
    assert reranker_q8.numerics == {"documents": EXACT.short}   # ... and Q8_0 ones keep the exact path
    assert reranker.fidelity_worst == pytest.approx(0.03)       # the largest |dP|, not the smallest


def test_bench_types_quantizes_measures_and_names_the_fastest(embedding_gguf_64, tmp_path):
    work = tmp_path / "work"
    result = bench(embedding_gguf_64, "--types", "q8_0,q4_0", "--seconds", 1, "--threads", 1, "--work-dir", work,
                   "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["type_name"]: row for row in report["types"]}
    assert list(rows) == ["F32", "Q8_0", "Q4_0"]
    assert rows["F32"]["is_source"] and rows["F32"]["fidelity_mean"] == pytest.approx(1, abs=1e-12)
    assert rows["F32"]["size_bytes"] > rows["Q8_0"]["size_bytes"] > rows["Q4_0"]["size_bytes"]
    assert rows["F32"]["bits_per_weight"] > rows["Q8_0"]["bits_per_weight"] > rows["Q4_0"]["bits_per_weight"]
    # Fidelity is measured, not assumed: fewer bits, further from the source.
    assert 1 > rows["Q8_0"]["fidelity_mean"] > rows["Q4_0"]["fidelity_mean"] > 0.5
    assert rows["Q4_0"]["fidelity_worst"] <= rows["Q4_0"]["fidelity_mean"]
    for row in rows.values():
        documents, queries = row["speeds"]["documents"], row["speeds"]["queries"]
        assert documents["rounds"] >= 2 and queries["rounds"] >= 2
        assert DOCUMENT_TOKENS - 8 <= documents["tokens_per_text"] <= DOCUMENT_TOKENS
        assert documents["tokens_per_s"] > 0 and queries["tokens_per_s"] > 0
    assert report["floor"] == {"measure": "cosine", "value": 0.99}
    meeting = [row for row in rows.values() if row["fidelity_mean"] >= 0.99]
    assert report["fastest"] == max(meeting, key=lambda row: row["speeds"]["documents"]["tokens_per_s"])["type_name"]
    quantized = sorted(work.glob("*.gguf"))
    assert [p.name.split("-", 1)[1] for p in quantized] == ["Q4_0.gguf", "Q8_0.gguf"]
    assert {rows["Q8_0"]["path"], rows["Q4_0"]["path"]} == {str(p) for p in quantized}

    # A second run reuses the files and prints the table and the choice.
    written = {p: p.stat().st_mtime_ns for p in quantized}
    again = bench(embedding_gguf_64, "--types", "q8_0,q4_0", "--seconds", 1, "--threads", 1, "--work-dir", work,
                  "--min-cosine", 0.5)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in quantized} == written
    assert again.stderr.count("reusing") == 2
    lines = again.stdout.splitlines()
    assert lines[1].startswith("documents of 5") and "8 queries of " in lines[1]
    assert [line.split()[0] for line in lines[3:6]] == ["F32*", "Q8_0", "Q4_0"]
    assert lines[6].startswith("fastest documents at mean cosine >= 0.5: ") and str(work) in lines[6]


def _one_line_exit_2(result, *words):
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    for word in words:
        assert word in result.stderr


@pytest.mark.parametrize(("types", "words"), [("q8_0,q9_z", ("q9_z", "Q4_K_M")), (" , ", ("--types is empty",))])
def test_bench_types_refuses_an_unknown_type(embedding_gguf_64, types, words, tmp_path):
    result = bench(embedding_gguf_64, "--types", types, "--work-dir", tmp_path / "work")
    _one_line_exit_2(result, *words)
    assert not (tmp_path / "work").exists()   # refused before any file is written


def test_bench_types_refuses_a_quantized_model(converted, embedding_ckpt_64, tmp_path):
    quantized = converted(embedding_ckpt_64, "q8_0")
    result = bench(quantized, "--types", "q4_0", "--work-dir", tmp_path / "work")
    _one_line_exit_2(result, str(quantized), "already quantized", "F16")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("floor", ["0", "-0.5", "1.5", "nan"])
def test_bench_types_refuses_a_floor_outside_0_1(embedding_gguf_64, floor, tmp_path):
    result = bench(embedding_gguf_64, "--types", "q8_0", "--min-cosine", floor, "--work-dir", tmp_path / "work")
    _one_line_exit_2(result, "--min-cosine", "(0, 1]")


def test_bench_comparison_options_need_types(tmp_path):
    result = bench(tmp_path / "any.gguf", "--min-cosine", "0.9")
    _one_line_exit_2(result, "--min-cosine", "--types")


def test_bench_types_on_a_reranker_reports_delta_p(reranker_tied_gguf, tmp_path):
    result = bench(reranker_tied_gguf, "--types", "q8_0", "--seconds", 1, "--threads", 1, "--work-dir",
                   tmp_path / "work", "--max-delta-p", 0.5, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "reranker" and report["floor"] == {"measure": "|dP(yes)|", "value": 0.5}
    rows = {row["type_name"]: row for row in report["types"]}
    assert list(rows) == ["F32", "Q8_0"]
    assert rows["F32"]["fidelity_mean"] == 0 and rows["F32"]["fidelity_worst"] == 0
    assert 0 < rows["Q8_0"]["fidelity_mean"] <= rows["Q8_0"]["fidelity_worst"] < 0.5
    for row in rows.values():
        assert list(row["speeds"]) == ["documents"]
        pair = row["speeds"]["documents"]
        assert DOCUMENT_TOKENS - 8 <= pair["tokens_per_text"] <= DOCUMENT_TOKENS and pair["rounds"] >= 2
    meeting = [row for row in rows.values() if row["fidelity_mean"] <= 0.5]
    assert report["fastest"] == max(meeting, key=lambda row: row["speeds"]["documents"]["tokens_per_s"])["type_name"]


@pytest.mark.parametrize(("options", "words"), [
    (("--min-cosine", "0.9"), ("reranker", "--max-delta-p")),
    (("--fastest-for", "queries"), ("reranker", "queries")),
    (("--max-delta-p", "1"), ("--max-delta-p", "[0, 1)")),
    (("--max-delta-p", "-0.1"), ("--max-delta-p", "[0, 1)")),
])
def test_bench_types_refuses_embedding_options_for_a_reranker(reranker_tied_gguf, options, words, tmp_path):
    result = bench(reranker_tied_gguf, "--types", "q8_0", *options, "--work-dir", tmp_path / "work")
    _one_line_exit_2(result, *words)
    assert not (tmp_path / "work").exists()


def test_bench_types_refuses_a_reranker_floor_for_an_embedding_model(embedding_gguf_64, tmp_path):
    result = bench(embedding_gguf_64, "--types", "q8_0", "--max-delta-p", "0.1", "--work-dir", tmp_path / "work")
    _one_line_exit_2(result, "--max-delta-p", "embedding model", "--min-cosine")
