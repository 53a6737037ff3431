"""`quantize --fastest`: the choice follows measured kernel speeds, the kernel-speed table is kept per
CPU and llama.cpp build, bad input is refused, and a real run on a small model end to end."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q

from qwen3_gguf.cli import cli
from qwen3_gguf.errors import UserError
from qwen3_gguf.quantization.fastest import choose_fastest, fastest_quantization
from qwen3_gguf.quantization.kernel_speeds import KernelSpeedCache, MachineIdentity, TypeSpeeds, this_machine
from qwen3_gguf.quantization.search import SearchSettings, SearchTarget

SETTINGS = SearchSettings(candidates=(Q.Q4_K, Q.Q8_0), calibration_records=8, max_tokens=64, eval_limit=8)
MACHINE = MachineIdentity(cpu="test CPU | avx2", build="llama.cpp test build", threads=2)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


class SpeedTable:
    """An injected kernel measurement: seconds per token proportional to a matrix's elements, at a
    per-type rate; counts the measurements it was asked for."""

    def __init__(self, seconds_per_element: dict[str, float]):
        self.seconds_per_element = seconds_per_element
        self.measured: list[str] = []

    def __call__(self, model, ggml_type, file_type, document_tokens, threads, folder, imatrix) -> TypeSpeeds:
        from qwen3_gguf.quantization.kernel_speeds import model_shapes

        self.measured.append(ggml_type.name)
        rate = self.seconds_per_element[ggml_type.name]
        shapes = set(model_shapes(model).values())
        return TypeSpeeds({s: rate * math.prod(int(n) for n in s.split("x")) for s in shapes}, 1e-4)


# --- the choice, on tables with known answers ---------------------------------------------------------

SENSITIVITY = {"a": {"F16": 0.0, "Q4_K": 0.010, "Q8_0": 0.001}, "b": {"F16": 0.0, "Q4_K": 0.500, "Q8_0": 0.002}}
BYTES = {"a": {"F16": 2000, "Q4_K": 560, "Q8_0": 1062}, "b": {"F16": 2000, "Q4_K": 560, "Q8_0": 1062}}
Q4_K_FASTEST = {g: {"F16": 3.0, "Q4_K": 1.0, "Q8_0": 2.0} for g in SENSITIVITY}
Q8_0_FASTEST = {g: {"F16": 3.0, "Q4_K": 2.0, "Q8_0": 1.0} for g in SENSITIVITY}


def test_the_choice_follows_the_speed_table_within_the_floor():
    assert choose_fastest(SENSITIVITY, Q4_K_FASTEST, BYTES, 0.0, 0.02) == {"a": "Q4_K", "b": "Q8_0"}
    assert choose_fastest(SENSITIVITY, Q4_K_FASTEST, BYTES, 0.0, 0.6) == {"a": "Q4_K", "b": "Q4_K"}
    assert choose_fastest(SENSITIVITY, Q8_0_FASTEST, BYTES, 0.0, 0.6) == {"a": "Q8_0", "b": "Q8_0"}
    assert choose_fastest(SENSITIVITY, Q8_0_FASTEST, BYTES, 0.0, 0.0015) == {"a": "Q8_0", "b": "F16"}
    assert choose_fastest(SENSITIVITY, Q8_0_FASTEST, BYTES, 0.0, 0.0) == {"a": "F16", "b": "F16"}


def test_equally_fast_types_fall_to_the_smaller():
    same = {g: {"F16": 1.0, "Q4_K": 1.0, "Q8_0": 1.0} for g in SENSITIVITY}
    assert choose_fastest(SENSITIVITY, same, BYTES, 0.0, 0.6) == {"a": "Q4_K", "b": "Q4_K"}


# --- a search with injected speed tables -------------------------------------------------------------

def test_the_bulk_type_changes_with_the_measured_speeds(embedding_gguf_256, search_work):
    target = SearchTarget(min_cosine=0.5)                 # every candidate meets it on this model
    chosen = {}
    for fastest, table in (("Q4_K", {"F16": 3e-9, "Q4_K": 1e-9, "Q8_0": 2e-9}),
                           ("Q8_0", {"F16": 3e-9, "Q4_K": 2e-9, "Q8_0": 1e-9})):
        machine = MachineIdentity(cpu=f"a CPU where {fastest} is fastest", build="b", threads=2)
        result = fastest_quantization(embedding_gguf_256, target, SETTINGS, work_dir=search_work,
                                      machine=machine, measure=SpeedTable(table))
        chosen[fastest] = result.search
        assert set(result.search.chosen.values()) == {fastest}, result.search.chosen
        assert result.search.predicted_error <= 1 - target.min_cosine
        seconds = 1e-4 + sum(result.group_seconds[g][fastest] for g in result.search.chosen)
        assert result.predicted_tokens_per_s == pytest.approx(1 / seconds)
    assert (chosen["Q4_K"].file_type, chosen["Q8_0"].file_type) == ("Q4_K_M", "Q8_0")
    assert set(chosen["Q4_K"].tensor_types.values()) == {"Q4_K"}


def test_a_tight_floor_overrides_the_fastest_kernel(embedding_gguf_256, search_work):
    loose = fastest_quantization(embedding_gguf_256, SearchTarget(min_cosine=0.5), SETTINGS, work_dir=search_work,
                                 machine=MACHINE, measure=SpeedTable({"F16": 3e-9, "Q4_K": 1e-9, "Q8_0": 2e-9}))
    q4_errors = sorted(e["Q4_K"] for e in loose.search.sensitivity.values())
    floor = loose.search.base_error + q4_errors[0] + q4_errors[1] / 2    # room for one group at Q4_K
    tight = fastest_quantization(embedding_gguf_256, SearchTarget(min_cosine=1 - floor), SETTINGS,
                                 work_dir=search_work, machine=MACHINE,
                                 measure=SpeedTable({"F16": 3e-9, "Q4_K": 1e-9, "Q8_0": 2e-9}))
    assert list(tight.search.chosen.values()).count("Q4_K") == 1
    assert tight.search.predicted_error <= floor


# --- the kernel-speed table: kept, reused, and re-measured for another CPU or build -----------------------

def test_kernel_speeds_are_reused_and_remeasured_for_another_cpu_or_build(embedding_gguf_256, tmp_path):
    table = SpeedTable({"F16": 3e-9, "Q4_K": 1e-9, "Q8_0": 2e-9})

    def speeds(machine):
        cache = KernelSpeedCache(tmp_path, machine, measure=table)
        for t in (Q.F16, Q.Q4_K, Q.Q8_0):
            cache.speeds(embedding_gguf_256, t, "Q8_0")
        return cache

    first = speeds(MACHINE)
    assert (first.measured_now, first.reused, table.measured) == (3, 0, ["F16", "Q4_K", "Q8_0"])
    again = speeds(MACHINE)
    assert (again.measured_now, again.reused) == (0, 3) and len(table.measured) == 3
    assert again.path == first.path and json.loads(first.path.read_text())["machine"]["cpu"] == MACHINE.cpu
    for other in (MachineIdentity("another CPU | avx512f", MACHINE.build, 2),
                  MachineIdentity(MACHINE.cpu, "llama.cpp another build", 2),
                  MachineIdentity(MACHINE.cpu, MACHINE.build, 4)):
        cache = speeds(other)
        assert (cache.measured_now, cache.reused) == (3, 0) and cache.path != first.path
    assert len(table.measured) == 12
    assert KernelSpeedCache(tmp_path, MACHINE, document_tokens=128, measure=table).path != first.path


def test_this_machine_names_the_cpu_and_the_build():
    machine = this_machine(2)
    assert machine.threads == 2 and machine.cpu
    assert machine.build.startswith("llama-cpp-python ") and "|" in machine.build


# --- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--target-bpw", "5"], "--fastest chooses the fastest file that meets a fidelity floor; drop --target-bpw"),
    (["--target-size", "1MiB", "--min-cosine", "0.99"], "drop --target-bpw and --target-size"),
    ([], "--fastest needs a fidelity floor: --min-cosine C (embedding models) or --max-delta-p D"),
    (["--max-delta-p", "0.01"], "--max-delta-p is for rerankers; {model} is an embedding model"),
    (["--min-cosine", "1.5"], "--min-cosine must be in (0, 1], got 1.5"),
    (["Q4_K_M", "--min-cosine", "0.99"], "a search target chooses every tensor's type: drop TYPE"),
])
def test_bad_fastest_input_is_refused_before_any_work(embedding_gguf_256, tmp_path, args, message):
    outcome = invoke("quantize", str(embedding_gguf_256), "--fastest", *args, "--no-imatrix",
                     "-o", str(tmp_path / "out.gguf"))
    assert outcome.exit_code == 2, outcome.output
    assert message.format(model=embedding_gguf_256) in outcome.output
    assert "Traceback" not in outcome.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_python_api_refuses_a_size_target(embedding_gguf_256, tmp_path):
    with pytest.raises(UserError, match="--fastest needs a fidelity floor"):
        fastest_quantization(embedding_gguf_256, SearchTarget(bits_per_weight=5), work_dir=tmp_path)


# --- end to end: real kernel times on a small model -------------------------------------------------

def test_cli_fastest_measures_builds_and_reports_speed(embedding_gguf_256, tmp_path):
    out = tmp_path / "fast.gguf"
    args = ["quantize", str(embedding_gguf_256), "--fastest", "--min-cosine", "0.9", "--no-imatrix",
            "--budget-minutes", "0.001", "--work-dir", str(tmp_path / "work"), "-o", str(out)]
    outcome = invoke(*args)
    assert outcome.exit_code == 0, outcome.output
    assert "kernel time on this CPU: µs per token of one matrix, 512-token document" in outcome.output
    assert "kernel speeds: 2 types measured, 0 reused" in outcome.output           # F16 and Q4_K
    assert "note: fastest: types chosen by measured kernel time on this CPU" in outcome.output
    speed = json.loads(out.with_suffix(".speed.json").read_text(encoding="utf-8"))
    assert speed["predicted_tokens_per_s"] > 0 and speed["measured_tokens_per_s"] > 0
    assert set(speed["kernel_seconds_per_token"]) == {"F16", "Q4_K"}
    assert all(s > 0 for kernels in speed["kernel_seconds_per_token"].values() for s in kernels.values())
    assert isinstance(speed["measured_error"], float)
    search = json.loads(out.with_suffix(".search.json").read_text(encoding="utf-8"))
    assert search["chosen"] == speed["chosen"] and search["predicted_error"] <= 0.1
    again = tmp_path / "again.gguf"
    assert invoke("quantize", str(embedding_gguf_256), "--recipe", str(out.with_suffix(".recipe.toml")),
                  "-o", str(again)).exit_code == 0
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(out.read_bytes()).digest()
    out.unlink()
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "kernel speeds: 0 types measured, 2 reused" in second.output
    assert not list(Path(tmp_path / "work").glob("uniform-*.gguf"))
