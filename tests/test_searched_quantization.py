"""Searched quantization (`quantize --target-bpw` and friends): the knapsack, the planted-sensitivity
fixture against every stock type and recipe, the recipe that reproduces the file, the cache, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q

from qwen3_gguf.cli import cli
from qwen3_gguf.errors import UserError
from qwen3_gguf.quantization import plan_quantization, quantize
from qwen3_gguf.quantization import search as search_module
from qwen3_gguf.quantization.evaluation import load_eval_set
from qwen3_gguf.quantization.search import (
    SearchSettings,
    SearchTarget,
    build_searched,
    choose_types,
    evaluation_fidelity,
    search_quantization,
)
from qwen3_gguf.quantization.types import bits_per_weight

STOCK_TYPES = ("Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")
RULE_RECIPES = ("llama-default", "bump-attn-v-ffn-down", "bump-edges")   # the shipped recipes of a plain type
PLANTED_GROUP = "blk.1.ffn_gate_up"
# Small enough to run here: three candidate types, a short calibration split and evaluation set.
FAST = SearchSettings(candidates=(Q.Q5_K, Q.Q6_K, Q.Q8_0), calibration_records=16, max_tokens=64, eval_limit=48)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


# --- the knapsack, on a table with known answers ---------------------------------------------------

SENSITIVITY = {"a": {"F16": 0.0, "Q4_K": 0.01, "Q8_0": 0.001}, "b": {"F16": 0.0, "Q4_K": 0.5, "Q8_0": 0.002}}
BYTES = {"a": {"F16": 2000, "Q4_K": 560, "Q8_0": 1062}, "b": {"F16": 2000, "Q4_K": 560, "Q8_0": 1062}}


def test_knapsack_spends_the_budget_on_the_sensitive_group():
    assert choose_types(SENSITIVITY, BYTES, 0.0, 560 + 1062, None) == {"a": "Q4_K", "b": "Q8_0"}
    assert choose_types(SENSITIVITY, BYTES, 0.0, 2 * 1062, None) == {"a": "Q8_0", "b": "Q8_0"}
    assert choose_types(SENSITIVITY, BYTES, 0.0, 2000 + 1062, None) == {"a": "Q8_0", "b": "F16"}


def test_knapsack_with_a_floor_takes_the_fewest_bytes_that_meet_it():
    assert choose_types(SENSITIVITY, BYTES, 0.0, None, 0.02) == {"a": "Q4_K", "b": "Q8_0"}
    assert choose_types(SENSITIVITY, BYTES, 0.0, None, 0.0025) == {"a": "Q8_0", "b": "F16"}


def test_target_size_text():
    from qwen3_gguf.cli.quantize import _bytes

    assert _bytes("400MiB") == 400 * 2**20
    assert _bytes("1.5GB") == 1_500_000_000
    with pytest.raises(UserError, match="--target-size 'big'"):
        _bytes("big")


# --- the planted fixture: sensitivity no rule can find -----------------------------------------------

@pytest.fixture(scope="module")
def planted_searches(embedding_planted_gguf, tmp_path_factory):
    """One search per stock type, at that type's size (its llama-default plan's bits per weight), in one
    work folder: the first measures, the others reuse."""
    work = tmp_path_factory.mktemp("search-work")
    results = {}
    for type_name in STOCK_TYPES:
        target = SearchTarget(bits_per_weight=plan_quantization(embedding_planted_gguf, type_name).bits_per_weight)
        results[type_name] = search_quantization(embedding_planted_gguf, target, FAST, work_dir=work)
    return work, results


def test_second_search_reuses_every_measurement(planted_searches):
    _, results = planted_searches
    first, *others = results.values()
    assert len(first.sensitivity) == 3 * 4 + 1                    # four groups per block, the token embedding
    assert sorted(first.scales) == ["attn_output", "attn_qkv", "ffn_down", "ffn_gate_up", "token_embd"]
    assert (first.measured_now, first.reused) == (1 + 5, 0)       # the base, then each kind at the first candidate
    for other in others:
        assert (other.measured_now, other.reused) == (0, 1 + 5)


def test_the_proxy_singles_out_the_planted_group_among_its_kind(planted_searches):
    """The weight-error proxy alone (no model run per group) ranks the planted group far above the
    same tensors of the other blocks, at every candidate type."""
    _, results = planted_searches
    proxy = results["Q4_K_M"].proxy
    for type_name in ("Q5_K", "Q6_K", "Q8_0"):
        others = [proxy[f"blk.{i}.ffn_gate_up"][type_name] for i in (0, 2)]
        assert proxy[PLANTED_GROUP][type_name] > 10 * max(others), (type_name, proxy)


def test_planted_tensors_get_more_bits_than_the_base_type(planted_searches, embedding_planted_gguf):
    _, results = planted_searches
    for type_name, result in results.items():
        base = plan_quantization(embedding_planted_gguf, type_name).quant_type.file_type.base
        chosen = Q[result.chosen[PLANTED_GROUP]]
        assert bits_per_weight(chosen) > bits_per_weight(base), (type_name, result.chosen)
        for tensor in ("blk.1.ffn_gate.weight", "blk.1.ffn_up.weight"):
            assert result.tensor_types[tensor] == chosen.name


def test_searched_file_beats_every_stock_type_and_recipe_on_the_evaluation_set(
        planted_searches, embedding_planted_gguf, tmp_path):
    work, results = planted_searches
    evalset = load_eval_set(None, limit=FAST.eval_limit)
    for type_name, result in results.items():
        searched = build_searched(result, tmp_path / f"searched-{type_name}.gguf", work_dir=work)
        folder = work / result.source_sha256[:16] / search_module._settings_key(FAST)
        for recipe in RULE_RECIPES:
            plan = plan_quantization(embedding_planted_gguf, type_name, recipe=recipe)
            assert searched.n_bytes <= plan_quantization(embedding_planted_gguf, type_name).n_bytes <= plan.n_bytes
            stock = quantize(plan, tmp_path / f"{type_name}-{recipe}.gguf").path
            stock_fidelity = evaluation_fidelity(embedding_planted_gguf, stock, "embedding", evalset, FAST, folder)
            assert 1 - searched.evaluation_fidelity["cosine_mean"] < 1 - stock_fidelity["cosine_mean"], \
                (type_name, recipe, searched.evaluation_fidelity, stock_fidelity)


def test_recipe_reproduces_the_file_bit_for_bit(planted_searches, embedding_planted_gguf, tmp_path):
    work, results = planted_searches
    out = tmp_path / "searched.gguf"
    result = build_searched(results["Q4_K_M"], out, work_dir=work)
    recipe = out.with_suffix(".recipe.toml")
    header = recipe.read_text(encoding="utf-8").splitlines()
    assert header[0].endswith(f"(sha256 {result.source_sha256})")
    assert header[1].startswith("# target: ") and "measured mean 1 − cosine" in header[2]
    again = tmp_path / "again.gguf"
    outcome = invoke("quantize", str(embedding_planted_gguf), "--recipe", str(recipe), "-o", str(again))
    assert outcome.exit_code == 0, outcome.output
    assert sha256(again) == sha256(out)


# --- interruption: kill resumes, Ctrl-C leaves nothing ------------------------------------------------

KILLED_SEARCH = textwrap.dedent("""
    import os, signal, sys
    from gguf import GGMLQuantizationType as Q
    from qwen3_gguf.quantization.search import SearchSettings, SearchTarget, search_quantization

    measured = []
    def kill_after_three(label):
        measured.append(label)
        if len(measured) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    search_quantization(sys.argv[1], SearchTarget(bits_per_weight=9.0),
                        SearchSettings(candidates=(Q.Q8_0,), calibration_records=8, max_tokens=64),
                        work_dir=sys.argv[2], on_measured=kill_after_three)
""")


def test_sigkilled_search_resumes_where_it_stopped(embedding_gguf_256, tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.run([sys.executable, "-c", KILLED_SEARCH, str(embedding_gguf_256), str(work)], env=env)
    assert child.returncode == -9
    result = search_quantization(embedding_gguf_256, SearchTarget(bits_per_weight=9.0),
                                 SearchSettings(candidates=(Q.Q8_0,), calibration_records=8, max_tokens=64),
                                 work_dir=work)
    assert result.reused == 3                                    # the base and two kinds, before the kill
    assert result.measured_now == 1 + len(result.scales) - 3
    assert not list(work.rglob("*.partial")) and not list(work.rglob("variant.gguf"))


def test_interrupted_build_leaves_no_output_and_no_recipe(embedding_gguf_256, search_work, tmp_path, monkeypatch):
    settings = SearchSettings(candidates=(Q.Q8_0,), calibration_records=8, max_tokens=64, eval_limit=8)
    result = search_quantization(embedding_gguf_256, SearchTarget(bits_per_weight=9.0), settings,
                                 work_dir=search_work)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_module, "run_model", interrupted)  # the built file is being measured
    with pytest.raises(KeyboardInterrupt):
        build_searched(result, tmp_path / "out.gguf", work_dir=search_work)
    assert list(tmp_path.iterdir()) == []


# --- the command line and bad input -------------------------------------------------------------------

def test_cli_search_within_a_time_budget_then_the_recipe(embedding_gguf_256, tmp_path):
    out = tmp_path / "searched.gguf"
    outcome = invoke("quantize", str(embedding_gguf_256), "--target-bpw", "7", "--no-imatrix",
                     "--budget-minutes", "0.001", "-o", str(out))
    assert outcome.exit_code == 0, outcome.output
    assert "sensitivity: mean 1 − cosine added over the base" in outcome.output
    assert "note: IQ types not searched: no importance matrix" in outcome.output
    assert "note: --budget-minutes 0.001: searched among Q4_K and F16" in outcome.output
    assert out.is_file() and out.with_suffix(".recipe.toml").is_file() and out.with_suffix(".search.json").is_file()
    again = tmp_path / "again.gguf"
    assert invoke("quantize", str(embedding_gguf_256), "--recipe", str(out.with_suffix(".recipe.toml")),
                  "-o", str(again)).exit_code == 0
    assert sha256(again) == sha256(out)


def test_cli_target_size_gives_a_file_no_larger(embedding_gguf_256, tmp_path):
    out = tmp_path / "searched.gguf"
    size = quantize(plan_quantization(embedding_gguf_256, "Q6_K"), tmp_path / "q6.gguf").path.stat().st_size
    outcome = invoke("quantize", str(embedding_gguf_256), "--target-size", f"{size}B", "--no-imatrix",
                     "-o", str(out), "--work-dir", str(tmp_path / "work"))
    assert outcome.exit_code == 0, outcome.output
    assert f"target {size / 2**20:.1f} MiB:" in outcome.output
    assert size * 0.9 < out.stat().st_size <= size                 # the budget spent, not exceeded


def test_cli_reranker_search_meets_its_delta_p_floor(reranker_wide_tied_gguf, tmp_path):
    out = tmp_path / "searched.gguf"
    floor = 0.01
    outcome = invoke("quantize", str(reranker_wide_tied_gguf), "--max-delta-p", str(floor), "--no-imatrix",
                     "-o", str(out), "--work-dir", str(tmp_path / "work"))
    assert outcome.exit_code == 0, outcome.output
    assert "sensitivity: mean |ΔP(yes)| added over the base" in outcome.output
    report = json.loads(out.with_suffix(".search.json").read_text(encoding="utf-8"))
    assert report["error_measure"] == "mean |ΔP(yes)|"
    assert report["measured_error"] <= floor                      # on the calibration split, as promised
    assert "mean_abs_delta" in report["evaluation_fidelity"]
    assert out.stat().st_size < 0.6 * reranker_wide_tied_gguf.stat().st_size      # smaller than F16 everywhere


@pytest.mark.parametrize(("args", "message"), [
    (["--target-bpw", "1.0"], "no file of {model} is as small as 1 bits per weight: the smallest the search can "
                              "make (every group at its smallest candidate type) is 2."),
    (["--target-size", "1MiB"], "no file of {model} is as small as 1.0 MiB"),
    (["--target-size", "huge"], "--target-size 'huge' is not a size such as 400MiB"),
    (["--target-bpw", "5", "--min-cosine", "0.99"], "give exactly one search target"),
    (["--max-delta-p", "0.01"], "--max-delta-p is for rerankers; {model} is an embedding model"),
    (["--min-cosine", "1.5"], "--min-cosine must be in (0, 1], got 1.5"),
    (["Q4_K_M", "--target-bpw", "5"], "a search target chooses every tensor's type: drop TYPE"),
    ([], "give the quantization TYPE (or a recipe that names its type, or a search target)"),
])
def test_bad_search_targets_are_refused_before_any_work(embedding_gguf_256, tmp_path, args, message):
    out = tmp_path / "out.gguf"
    outcome = invoke("quantize", str(embedding_gguf_256), *args, "--no-imatrix", "-o", str(out))
    assert outcome.exit_code == 2, outcome.output
    assert message.format(model=embedding_gguf_256) in outcome.output
    assert "Traceback" not in outcome.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_fidelity_floor_above_f16s_is_refused_with_the_closest(embedding_gguf_256, tmp_path):
    out = tmp_path / "out.gguf"
    outcome = invoke("quantize", str(embedding_gguf_256), "--min-cosine", "1", "--no-imatrix", "-o", str(out),
                     "--work-dir", str(tmp_path / "work"))
    assert outcome.exit_code == 2, outcome.output
    assert "no file meets mean cosine ≥ 1: even F16 everywhere misses it on the calibration split; " \
           "the closest reachable is --min-cosine 0.99999" in outcome.output
    assert not out.exists()


def test_quantized_model_and_iq_without_imatrix_are_refused(embedding_gguf_256, tmp_path):
    quantized = quantize(plan_quantization(embedding_gguf_256, "Q8_0"), tmp_path / "q8.gguf").path
    outcome = invoke("quantize", str(quantized), "--target-bpw", "5", "--no-imatrix", "-o", str(tmp_path / "o.gguf"))
    assert outcome.exit_code == 2
    assert f"{quantized} is already quantized" in outcome.output
    with pytest.raises(UserError, match="IQ types are searched only with an importance matrix"):
        search_quantization(embedding_gguf_256, SearchTarget(bits_per_weight=5),
                            SearchSettings(candidates=(Q.IQ4_XS,)), work_dir=tmp_path / "work")


def test_sweep_adds_searched_files_beside_the_stock_types(embedding_gguf_256, imatrix_256, tmp_path):
    from qwen3_gguf.quantization import write_imatrix
    from qwen3_gguf.quantization.sweep import SweepSettings, run_sweep

    imatrix = write_imatrix(imatrix_256.matrix, tmp_path / "imatrix.gguf")
    settings = SweepSettings(types=("Q4_K_M",), recipes=("llama-default",), imatrix=imatrix, limit=12, max_tokens=64,
                             searched=(9.0,),
                             search=SearchSettings(candidates=(Q.Q8_0,), calibration_records=8, max_tokens=64))
    result = run_sweep(embedding_gguf_256, tmp_path / "sweep", settings)
    labels = [row.label for row in result.rows]
    assert labels == ["F32 (reference)", "Q4_K_M llama-default", "9 bpw searched"]
    searched = result.rows[-1]
    assert searched.path.name.endswith("-searched-9bpw.gguf") and searched.path.with_suffix(".recipe.toml").is_file()
    assert 'imatrix = "' in searched.path.with_suffix(".recipe.toml").read_text(encoding="utf-8")
    assert searched.measured["bits_per_weight"] <= 9.0 + 0.1                 # the file, with its header
    assert searched.measured["fidelity"]["cosine_mean"] > result.rows[1].measured["fidelity"]["cosine_mean"]
