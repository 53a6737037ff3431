"""`qwen3-gguf sweep`: a family of quants built, measured against the reference, and reported."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from qwen3_gguf import Embedder
from qwen3_gguf.cli import cli
from qwen3_gguf.quantization.evaluation import load_eval_set
from qwen3_gguf.quantization.report import PARETO_MARK
from qwen3_gguf.quantization.sweep import MANIFEST

TYPES = ("Q2_K", "Q4_K_M", "Q8_0")
RECIPES = ("llama-default", "bump-edges")
LIMIT = 40


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --- the evaluation set ------------------------------------------------------------------------


def test_the_shipped_evaluation_set_is_multilingual_and_not_the_calibration():
    from qwen3_gguf.quantization.imatrix import load_calibration

    evalset = load_eval_set()
    assert len(evalset.pairs) >= 250 and len(evalset.documents) >= 350
    queries = " ".join(q.query for q in evalset.queries)
    for first, last in (("\u4e00", "\u9fff"), ("\u0600", "\u06ff"), ("\u0900", "\u097f"), ("\u0400", "\u04ff"),
                        ("\uac00", "\ud7af"), ("\u3040", "\u30ff")):  # Han, Arabic, Devanagari, Cyrillic, Hangul, kana
        assert any(first <= c <= last for c in queries)
    calibration, _ = load_calibration()
    seen = {r.query for r in calibration} | {r.document for r in calibration}
    assert not seen & ({q.query for q in evalset.queries} | set(evalset.documents))


def test_a_users_evaluation_file(tmp_path):
    lines = [{"query": "q0", "document": "d0"}, {"document": "extra"}, {"query": "q1", "document": "d1"},
             {"query": "only a query"}, {"query": "q2", "document": "d2", "instruction": "Find code"}]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    evalset = load_eval_set(path)
    assert evalset.documents == ["d0", "extra", "d1", "d2"]
    assert [q.query for q in evalset.queries] == ["q0", "q1", "only a query", "q2"]
    assert evalset.pairs == [(0, 0), (1, 2), (3, 3)]
    assert evalset.rerank_candidates() == [[0, 2, 3], [2, 3, 0], [3, 0, 2]]  # own document first
    assert load_eval_set(path, limit=3).documents == ["d0", "extra", "d1"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, embedding_gguf_256, calibration_file):
    """A sweep of the hidden-256 embedding fixture: 3 types × 2 recipes on 40 evaluation records."""
    out = tmp_path_factory.mktemp("sweep")
    result = run("sweep", embedding_gguf_256, "-o", out, "--types", ",".join(TYPES), "--recipes", ",".join(RECIPES),
                 "--calibration", calibration_file, "--limit", LIMIT)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def report(sweep_dir):
    out, _ = sweep_dir
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def row(report, type_name, recipe):
    return next(r for r in report["rows"] if r["type"] == type_name and r["recipe"] == recipe)


def test_one_row_per_type_and_recipe(sweep_dir, report):
    out, result = sweep_dir
    assert len(report["rows"]) == 1 + len(TYPES) * len(RECIPES)
    assert {(r["type"], r["recipe"]) for r in report["rows"] if r["recipe"]} == {(t, r) for t in TYPES for r in RECIPES}
    assert [r["label"] for r in report["rows"] if r["recipe"] is None] == ["F32 (reference)"]
    table = [line for line in (out / "report.md").read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(TYPES) * len(RECIPES)  # the header, then one line per row
    sizes = [r["size_bytes"] for r in report["rows"]]
    assert sizes == sorted(sizes)                            # sorted by size
    assert "recall@10" in table[0] and "nDCG@10 @128" in table[0]
    assert (out / "report.md").read_text(encoding="utf-8") in result.stdout


def test_reference_row_is_perfect(report):
    reference = next(r for r in report["rows"] if r["recipe"] is None)
    assert reference["type"] == "F32"
    for key in ("fidelity", "fidelity_reduced_dim"):
        assert reference[key]["cosine_min"] == pytest.approx(1.0, abs=1e-12)
        assert reference[key]["recall_at_10"] == 1.0
        assert reference[key]["ndcg_at_10"] == pytest.approx(1.0)
        assert reference[key]["spearman"] == pytest.approx(1.0)


def test_fidelity_follows_the_bits(report):
    """On this fixture the expectation is Q8_0 > Q4_K_M > Q2_K in mean cosine, under each recipe."""
    for recipe in ("llama-default", "bump-edges"):
        cosine = {t: row(report, t, recipe)["fidelity"]["cosine_mean"] for t in TYPES}
        assert cosine["Q8_0"] > cosine["Q4_K_M"] > cosine["Q2_K"]
    assert row(report, "Q8_0", "llama-default")["fidelity"]["cosine_min"] > 0.99
    bumped, plain = row(report, "Q2_K", "bump-edges"), row(report, "Q2_K", "llama-default")
    assert bumped["size_bytes"] > plain["size_bytes"]


@pytest.mark.filterwarnings("ignore::qwen3_gguf.embed.TruncationWarning")  # cut alike in the sweep
def test_numbers_match_a_recomputation_through_embedder(sweep_dir, report):
    """Embed the same 40 records with Embedder and recompute the cosines and recall@10 directly."""
    out, _ = sweep_dir
    evalset = load_eval_set(limit=LIMIT)
    quant = row(report, "Q4_K_M", "llama-default")

    def vectors(path):
        with Embedder(path, device="cpu", max_tokens=512) as embedder:
            docs = embedder.encode(evalset.documents)
            queries = embedder.encode([q.query for q in evalset.queries], prompt_name="query")
        return docs, queries

    reference_docs, reference_queries = vectors(next(r for r in report["rows"] if r["recipe"] is None)["path"])
    docs, queries = vectors(out / quant["file"])
    cosines = np.concatenate([np.sum(reference_docs * docs, 1), np.sum(reference_queries * queries, 1)])
    assert quant["fidelity"]["cosine_mean"] == pytest.approx(float(cosines.mean()), abs=1e-6)
    assert quant["fidelity"]["cosine_min"] == pytest.approx(float(cosines.min()), abs=1e-6)
    expected_top = np.argsort(-(reference_queries @ reference_docs.T), axis=1)[:, :10]
    got_top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(expected_top, got_top)])
    assert quant["fidelity"]["recall_at_10"] == pytest.approx(recall, abs=1e-9)


def test_identical_plans_share_a_file(sweep_dir, report):
    """Q8_0 is the top of its ladder: bump-edges changes nothing, so nothing is built twice."""
    out, result = sweep_dir
    shared = row(report, "Q8_0", "bump-edges")
    assert shared["same_as"] == "Q8_0 llama-default"
    assert shared["file"] == row(report, "Q8_0", "llama-default")["file"]
    assert "every tensor as in Q8_0 llama-default" in result.stderr
    assert len(list(out.glob("*.gguf"))) == 1 + 5  # the imatrix and five quants (the reference is SRC)


def test_pareto_marks(sweep_dir, report):
    out, _ = sweep_dir
    marked = {r["label"] for r in report["rows"] if r["pareto"]}
    assert "F32 (reference)" in marked   # nothing is closer to the reference than itself
    assert "Q2_K llama-default" in marked  # nothing is smaller
    for r in report["rows"]:
        def point(row):
            return row["size_bytes"], row["fidelity"]["cosine_mean"]

        dominated = any(point(o)[0] <= point(r)[0] and point(o)[1] >= point(r)[1] and point(o) != point(r)
                        for o in report["rows"] if o["same_as"] is None)
        assert r["pareto"] == (not dominated and r["same_as"] is None)
    lines = (out / "report.md").read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith(f"| {PARETO_MARK} |") for line in lines) == len(marked)


def test_the_plot_is_an_image(sweep_dir):
    from PIL import Image

    out, result = sweep_dir
    with Image.open(out / "pareto.png") as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100
    assert "pareto.png skipped" not in result.stderr


def test_a_rerun_builds_and_runs_nothing(sweep_dir, report, embedding_gguf_256, calibration_file):
    out, _ = sweep_dir
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")}
    result = run("sweep", embedding_gguf_256, "-o", out, "--types", ",".join(TYPES), "--recipes", ",".join(RECIPES),
                 "--calibration", calibration_file, "--limit", LIMIT)
    assert result.exit_code == 0, result.output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")} == before
    assert "build " not in result.stderr and "already there" in result.stderr
    assert "measure " not in result.stderr and result.stderr.count("measured before") == 6  # 5 quants, the reference
    again = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [r["fidelity"] for r in again["rows"]] == [r["fidelity"] for r in report["rows"]]


def test_without_matplotlib_the_plot_is_skipped_with_a_reason(sweep_dir, embedding_gguf_256, calibration_file,
                                                              tmp_path, monkeypatch):
    out, _ = sweep_dir
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy)
    (copy / "pareto.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = run("sweep", embedding_gguf_256, "-o", copy, "--types", "Q8_0", "--recipes", "llama-default",
                 "--calibration", calibration_file, "--limit", LIMIT)
    assert result.exit_code == 0, result.output
    assert "pareto.png skipped: matplotlib is not installed (pip install 'qwen3-gguf[report]')" in result.stderr
    assert not (copy / "pareto.png").exists()


def test_reranker_sweep(tmp_path, reranker_tied_gguf, calibration_file):
    result = run("sweep", reranker_tied_gguf, "-o", tmp_path / "rerank", "--types", "Q8_0,Q4_0",
                 "--recipes", "llama-default", "--calibration", calibration_file, "--limit", 12)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rerank" / "report.json").read_text(encoding="utf-8"))
    assert report["kind"] == "reranker" and report["queries"] == len(load_eval_set(limit=12).pairs)
    reference = next(r for r in report["rows"] if r["recipe"] is None)
    assert reference["fidelity"]["mean_abs_delta"] == 0.0 and reference["fidelity"]["top1_agreement"] == 1.0
    q8 = row(report, "Q8_0", "llama-default")
    assert 0 < q8["fidelity"]["mean_abs_delta"] < 0.05
    assert "top-1 agree" in (tmp_path / "rerank" / "report.md").read_text(encoding="utf-8")


def test_a_reranker_needs_pairs(reranker_tied_gguf, tmp_path):
    (tmp_path / "unpaired.jsonl").write_text('{"query": "a query"}\n{"document": "a document"}\n', encoding="utf-8")
    result = run("sweep", reranker_tied_gguf, "-o", tmp_path / "s", "--types", "Q8_0",
                 "--eval", tmp_path / "unpaired.jsonl")
    assert result.exit_code == 2
    assert "a reranker is evaluated on query/document pairs" in result.stderr
    assert not list((tmp_path / "s").iterdir())  # refused before the imatrix and any quant


# --- bad input: one line, exit code 2, nothing built -----------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["{model}", "-o", "{tmp}/s", "--types", "Q4_K_M,Q9_K"], "unknown quantization type 'Q9_K'; valid: "),
    (["{model}", "-o", "{tmp}/s", "--recipes", "bump-everything"], "unknown recipe 'bump-everything'"),
    (["{model}", "-o", "{tmp}/s", "--types", ""], "--types is empty"),
    (["{model}", "-o", "{tmp}/s", "--imatrix", "{tmp}/im.gguf", "--calibration", "{tmp}/c.jsonl"],
     "give --imatrix or --calibration, not both"),
    (["{model}", "-o", "{tmp}/s", "--imatrix", "{tmp}/im.gguf"], "imatrix not found"),
    (["{tmp}/missing", "-o", "{tmp}/s"], "{tmp}/missing not found: give a checkpoint folder or a GGUF file"),
    (["{model}", "-o", "{tmp}/s", "--eval", "{tmp}/docs.txt"], "needs queries and documents (it has 0 queries"),
    (["{model}", "-o", "{tmp}/s", "--eval", "{tmp}/nothing.jsonl"], "evaluation file not found"),
    (["{model}", "-o", "{tmp}/s", "--limit", "1"], "--limit must be at least 2"),
    (["{model}", "-o", "{tmp}/s", "--reference", "bf16"], "is F32; --reference chooses the precision"),
    (["{model}", "-o", "{tmp}/file.txt"], "is a file; -o names the folder"),
])
def test_bad_input(args, message, embedding_gguf_256, tmp_path):
    (tmp_path / "docs.txt").write_text("only documents\n\nno queries\n", encoding="utf-8")
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    fill = {"tmp": tmp_path, "model": embedding_gguf_256}
    result = run("sweep", *[a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(**fill) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_quantized_source_is_refused(sweep_dir, report, tmp_path):
    out, _ = sweep_dir
    result = run("sweep", out / row(report, "Q8_0", "llama-default")["file"], "-o", tmp_path / "s")
    assert result.exit_code == 2
    assert "is Q8_0: a sweep starts from an unquantized model" in result.stderr


def test_a_folder_of_another_sweep_is_refused(sweep_dir, embedding_gguf_256, imatrix_256, tmp_path):
    """The quants in DIR were built with the collected imatrix: another one would mix two sweeps."""
    from qwen3_gguf.quantization import write_imatrix

    out, _ = sweep_dir
    given = write_imatrix(imatrix_256.matrix, tmp_path / "other.gguf")
    result = run("sweep", embedding_gguf_256, "-o", out, "--types", "Q8_0", "--imatrix", given, "--limit", LIMIT)
    assert result.exit_code == 2
    assert f"{out} holds a sweep with another imatrix" in result.stderr
    assert json.loads((out / MANIFEST).read_text())["imatrix"].startswith("collected on")


def test_dim_outside_the_model(embedding_gguf_256, calibration_file, tmp_path):
    result = run("sweep", embedding_gguf_256, "-o", tmp_path / "s", "--types", "Q8_0", "--dim", "256",
                 "--calibration", calibration_file, "--limit", LIMIT)
    assert result.exit_code == 2
    assert "--dim 256 is outside 32…255" in result.stderr
