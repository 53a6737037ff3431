"""Quantization: plans against llama.cpp's own choices, real outputs against the plan and the oracle."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys

import llama_cpp
import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from held import held_quantizer_pid, holding_quantizer, wait_until_gone

from qwen3_gguf import Embedder, UserError, runtime
from qwen3_gguf.cli import cli
from qwen3_gguf.gguf_file import read_header, read_model_file
from qwen3_gguf.quantization import (
    ImportanceMatrix,
    load_recipe,
    parse_type,
    plan_quantization,
    quantize,
    recipe_names,
    write_imatrix,
)
from qwen3_gguf.quantization.types import FILE_TYPES, bits_per_weight

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "量子计算机利用量子比特进行运算，可以同时处于多种状态。",
    "Die Katze sitzt auf der Matte und schläft.",
    "القطة تجلس على الحصيرة",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "東京は日本の首都であり、世界有数の大都市です。",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Long document. " + " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(60)),
]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def planned_types(plan) -> dict[str, Q]:
    return {t.name: t.type for t in plan.tensors}


def written_types(path) -> dict[str, Q]:
    return {t.name: t.type for t in read_header(path).tensors}


# --- the plan is llama.cpp's own choice, exactly -------------------------------------------------


def synthetic_model(path, *, n_layer, heads, hidden, ff, untied=False):
    """A Qwen3-shaped GGUF with zero weights and a 64-token vocabulary: enough for llama.cpp's
    quantizer, which reads hyperparameters and tensor shapes only."""
    writer = GGUFWriter(path, arch="qwen3")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"token{i}" for i in range(64)])
    writer.add_block_count(n_layer)
    writer.add_context_length(4096)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads[0])
    writer.add_head_count_kv(heads[1])
    writer.add_layer_norm_rms_eps(1e-6)
    head_dim = 64
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)

    def tensor(name, *shape):  # GGML order: shape[0] is the row length; vectors are F32
        writer.add_tensor(name, np.zeros(shape[::-1], dtype=np.float16 if len(shape) > 1 else np.float32))

    tensor("token_embd.weight", hidden, 64)
    tensor("output_norm.weight", hidden)
    if untied:
        tensor("output.weight", hidden, 64)
    q, kv = heads[0] * head_dim, heads[1] * head_dim
    for i in range(n_layer):
        for name, shape in [("attn_norm", (hidden,)), ("attn_q", (hidden, q)), ("attn_k", (hidden, kv)),
                            ("attn_v", (hidden, kv)), ("attn_output", (q, hidden)), ("attn_q_norm", (head_dim,)),
                            ("attn_k_norm", (head_dim,)), ("ffn_norm", (hidden,)), ("ffn_gate", (hidden, ff)),
                            ("ffn_up", (hidden, ff)), ("ffn_down", (ff, hidden))]:
            tensor(f"blk.{i}.{name}.weight", *shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# 28 layers like Qwen3-0.6B (GQA 2), 36 like 4B/8B (GQA 4, untied output here), and a narrow
# model whose rows fit no 256-block and some no 32-block (the fallbacks).
SYNTHETIC = {
    "28-layers": dict(n_layer=28, heads=(4, 2), hidden=256, ff=320),
    "36-layers-gqa4": dict(n_layer=36, heads=(8, 2), hidden=256, ff=256, untied=True),
    "narrow": dict(n_layer=3, heads=(2, 1), hidden=96, ff=48),
}


@pytest.fixture(scope="module")
def synthetic_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return {name: synthetic_model(folder / f"{name}.gguf", **shape) for name, shape in SYNTHETIC.items()}


def ones_imatrix(path) -> ImportanceMatrix:
    rows = {t.name: t.shape[0] for t in read_header(path).tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    return ImportanceMatrix(sums={n: np.ones(r, np.float32) for n, r in rows.items()}, counts=dict.fromkeys(rows, 1))


def llama_dry_run_types(path, file_type: int, with_imatrix: bool) -> dict[str, Q]:
    """The type llama.cpp's quantizer picks for each tensor, read off its dry-run log."""
    log = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        log.append(text.decode())

    runtime.init_backend()
    llama_cpp.llama_log_set(collect, ctypes.c_void_p())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.dry_run, params.nthread = file_type, True, 1
    entries = (llama_cpp.llama_model_imatrix_data * 2)()
    values = np.ones(256, np.float32)
    entries[0].name, entries[0].size = b"unused", values.size
    entries[0].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    if with_imatrix:  # its presence is what changes llama.cpp's choices
        params.imatrix = entries
    try:
        assert llama_cpp.llama_model_quantize(str(path).encode(), b"unused.gguf", ctypes.byref(params)) == 0
    finally:
        runtime.init_backend()  # back to the project's silent log
    types = {}
    for line in "".join(log).splitlines():
        found = re.match(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s+(\w+), (.*)", line)
        if found:
            name, source, rest = found.groups()
            target = re.search(r"\((\w+)\)$", rest)
            types[name] = Q[(target.group(1) if target else source).upper()]
    return types


@pytest.mark.parametrize("model", SYNTHETIC)
def test_plan_is_llama_cpp_choice_for_every_file_type(model, synthetic_models):
    """For each file type, with and without an imatrix, the planned type of every tensor is the
    one llama.cpp's quantizer picks (its dry run), including the Q4_K_M/Q5_K_M layer mixes,
    the output/embedding types, GQA-dependent choices and shape fallbacks."""
    path = synthetic_models[model]
    compared = 0
    for name, file_type in FILE_TYPES.items():
        for imatrix in (ones_imatrix(path), None):
            try:
                plan = plan_quantization(path, name, imatrix=imatrix)
            except UserError as refusal:
                assert imatrix is None and "needs an importance matrix" in str(refusal)
                continue
            expected = llama_dry_run_types(path, int(file_type.ftype), with_imatrix=imatrix is not None)
            assert planned_types(plan) == expected, f"{name} {'with' if imatrix else 'without'} imatrix"
            compared += 1
    assert compared > 50


def test_use_more_bits_layers_of_q4_k_m(synthetic_models):
    """Guide §7: Q4_K_M raises attn_v and ffn_down to Q6_K in layers i < n/8, i >= 7n/8 and
    every third layer in between; the tied embedding (the output head) to Q6_K."""
    plan = plan_quantization(synthetic_models["28-layers"], "Q4_K_M", imatrix=None)
    types = planned_types(plan)
    raised = [i for i in range(28) if types[f"blk.{i}.attn_v.weight"] == Q.Q6_K]
    assert raised == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
    assert types["token_embd.weight"] == Q.Q6_K and types["blk.7.attn_q.weight"] == Q.Q4_K
    # ffn_down rows of 320 fit no 256-block: Q6_K falls back to Q8_0, Q4_K to Q5_0
    assert raised == [i for i in range(28) if types[f"blk.{i}.ffn_down.weight"] == Q.Q8_0]
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(28) if i not in raised} == {Q.Q5_0}


# --- recipes -------------------------------------------------------------------------------------


def test_bump_edges_never_goes_below_llama_cpp(synthetic_models):
    plan = plan_quantization(synthetic_models["28-layers"], "q4_k_m", recipe="bump-edges")
    for tensor in plan.tensors:
        assert bits_per_weight(tensor.type) >= bits_per_weight(tensor.llama_type), tensor.name
    types = planned_types(plan)
    # edges are blocks 0-2 and 25-27 (10% of 28, rounded up): attn_q one step up there only
    assert [i for i in range(28) if types[f"blk.{i}.attn_q.weight"] == Q.Q5_K] == [0, 1, 2, 25, 26, 27]
    # attn_v: Q5_K (base +1) in the middle, but where llama.cpp already gives Q6_K it stays Q6_K
    assert types["blk.10.attn_v.weight"] == Q.Q5_K and types["blk.11.attn_v.weight"] == Q.Q6_K
    assert types["blk.0.attn_v.weight"] == Q.Q6_K  # edge: base +2 = Q6_K
    why = {t.name: t.why for t in plan.tensors}
    assert "recipe bump-edges rule 3: base +1" in why["blk.10.attn_v.weight"]
    assert "llama.cpp Q4_K_M: attn_v in a use_more_bits layer" in why["blk.11.attn_v.weight"]


def test_bump_climbs_the_ladder_of_the_base_type(synthetic_models):
    path = synthetic_models["28-layers"]
    types = {name: planned_types(plan_quantization(path, name, recipe="bump-attn-v-ffn-down",
                                                   imatrix=ones_imatrix(path)))
             for name in ("Q3_K_S", "IQ3_XXS", "Q4_0", "IQ4_NL")}
    assert types["Q3_K_S"]["blk.10.attn_v.weight"] == Q.Q4_K
    assert types["IQ3_XXS"]["blk.10.attn_v.weight"] == Q.IQ3_S
    assert types["Q4_0"]["blk.10.attn_v.weight"] == Q.Q4_1
    assert types["IQ4_NL"]["blk.10.attn_v.weight"] == Q.IQ4_NL  # on no ladder: not bumped


def test_base_condition_of_a_rule(synthetic_models):
    path = synthetic_models["28-layers"]
    low = planned_types(plan_quantization(path, "q3_k_s", recipe="bump-edges"))
    high = planned_types(plan_quantization(path, "q5_k_s", recipe="bump-edges"))
    assert low["blk.10.attn_output.weight"] == Q.Q4_K  # base Q3_K is listed: +1
    assert high["blk.10.attn_output.weight"] == Q.Q5_K  # base Q5_K is not


@pytest.mark.parametrize("name, base, keep", [
    ("BF16_Q8_0", "Q8_0", Q.BF16), ("f16_q6_k", "Q6_K", Q.F16), ("bf16_q4_k", "Q4_K_M", Q.BF16),
    ("q4_k_l", "Q4_K_M", Q.Q8_0), ("Q3_K_XL", "Q3_K_L", Q.Q8_0), ("iq4_xs", "IQ4_XS", None), ("Q4_K", "Q4_K_M", None),
])
def test_type_names(name, base, keep):
    quant_type = parse_type(name)
    assert (quant_type.file_type.name, quant_type.keep) == (base, keep)


def test_unknown_type_lists_the_valid_ones():
    with pytest.raises(UserError) as refusal:
        parse_type("q4_km")
    for valid in [*FILE_TYPES, "bf16_q8_0", "q4_k_l"]:
        assert valid in str(refusal.value)


def test_recipe_from_a_file(tmp_path, embedding_gguf_256):
    (tmp_path / "mine.toml").write_text(
        'description = "attn_q at Q8_0 in the first half"\n'
        "rules = [{ match = 'attn_q', first = 0.5, type = \"Q8_0\" }]\n", encoding="utf-8")
    types = planned_types(plan_quantization(embedding_gguf_256, "q4_k_m", recipe=tmp_path / "mine.toml"))
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["blk.1.attn_q.weight"] == Q.Q4_K


@pytest.mark.parametrize("body, message", [
    ("rules = [{ match = '(', bump = 1 }]", "needs a valid regex"),
    ("rules = [{ match = 'x', bump = 1, type = 'Q8_0' }]", "exactly one of 'type' and 'bump'"),
    ("rules = [{ match = 'x', type = 'Q9_9' }]", "unknown tensor type 'Q9_9'"),
    ("rules = [{ match = 'x', bump = 1, edges = 0.1 }]", "unknown keys edges"),
    ("description = 'no rules'", "needs a list of rules"),
])
def test_bad_recipe_files(tmp_path, body, message):
    (tmp_path / "bad.toml").write_text(body + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_recipe(tmp_path / "bad.toml")


def test_shipped_recipes_are_listed_in_the_help():
    help_text = re.sub(r"-\s+", "-", " ".join(run("quantize", "--help").output.split()))  # unwrap
    assert all(name in help_text for name in recipe_names())
    assert {"llama-default", "bump-edges", "bump-attn-v-ffn-down", "hybrid"} <= set(recipe_names())


# --- real quantization: outputs load, embed, match the plan and the oracle -----------------------


@pytest.fixture(scope="module")
def oracle_texts(embedding_oracle_256):
    return embedding_oracle_256.embed(TEXTS)


# type, options, (floor on the minimum cosine, floor on the mean cosine) to the F32 oracle
QUANTIZATIONS = {
    "q8_0": ({}, (0.995, 0.995)),
    "q4_k_m": ({}, (None, 0.95)),
    "iq4_xs": ({"imatrix": True}, (None, None)),
    "iq2_xxs": ({"imatrix": True}, (None, None)),
    "bf16_q8_0": ({}, (0.995, 0.995)),
    "q4_k_l": ({"recipe": "bump-edges"}, (None, 0.95)),
}


@pytest.fixture(scope="module")
def quantized(embedding_gguf_256, imatrix_256, tmp_path_factory):
    """Quantize the hidden-256 F32 GGUF once per type; hand out (plan, result)."""
    folder, done = tmp_path_factory.mktemp("quantized"), {}

    def get(name):
        if name not in done:
            options, _ = QUANTIZATIONS[name]
            plan = plan_quantization(embedding_gguf_256, name, recipe=options.get("recipe"),
                                     imatrix=imatrix_256.matrix if options.get("imatrix") else None)
            done[name] = plan, quantize(plan, folder / f"{name}.gguf", threads=2)
        return done[name]
    return get


@pytest.mark.parametrize("name", QUANTIZATIONS)
def test_quantized_model_embeds_and_matches_the_plan(name, quantized, oracle_texts):
    plan, result = quantized(name)
    assert written_types(result.path) == planned_types(plan)
    model = read_model_file(result.path)
    assert model.tensor_bytes == plan.n_bytes
    assert abs(model.bits_per_weight - plan.bits_per_weight) < 1e-9
    with Embedder(result.path, device="cpu") as embedder:
        vectors = embedder.encode(TEXTS)
    cosines = np.sum(vectors * oracle_texts, axis=1)
    print(f"{name}: {result.file_size / 2**20:.1f} MiB, {plan.bits_per_weight:.2f} bpw, "
          f"cosine to F32 oracle min {cosines.min():.4f} mean {cosines.mean():.4f}, {result.seconds:.1f} s")
    assert np.all(np.isfinite(vectors)) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    min_floor, mean_floor = QUANTIZATIONS[name][1]
    if min_floor is not None:
        assert cosines.min() >= min_floor
    if mean_floor is not None:
        assert cosines.mean() >= mean_floor


def test_hybrid_keeps_the_sensitive_tensors(quantized):
    plan, result = quantized("bf16_q8_0")
    types = written_types(result.path)
    assert types["token_embd.weight"] == Q.BF16
    assert {t for n, t in types.items() if n.startswith("blk.") and "norm" not in n} == {Q.Q8_0}
    assert read_model_file(result.path).file_type == "Q8_0"


def test_imatrix_changes_the_quantized_bytes(quantized, embedding_gguf_256, tmp_path):
    plan, with_imatrix = quantized("iq4_xs")
    without = quantize(plan_quantization(embedding_gguf_256, "iq4_xs"), tmp_path / "plain.gguf", threads=2)
    tensors = {t.name: t for t in read_header(without.path).tensors}
    changed = []
    for tensor in read_header(with_imatrix.path).tensors:
        other = tensors[tensor.name]
        with open(with_imatrix.path, "rb") as a, open(without.path, "rb") as b:
            a.seek(tensor.offset)
            b.seek(other.offset)
            changed.append(tensor.name) if a.read(tensor.n_bytes) != b.read(other.n_bytes) else None
    matrices = {t.name for t in plan.tensors if t.name.startswith("blk.") and t.type == Q.IQ4_XS}
    assert matrices and set(changed) == matrices  # the imatrix has no token_embd entry: unchanged


# --- the CLI ---------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan(embedding_gguf_256, tmp_path):
    result = run("quantize", embedding_gguf_256, "Q4_K_M", "--dry-run", "--tensor-type", "ffn_up=q8_0")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["tensor", "shape", "type", "why"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert len(rows) == 24
    assert rows["blk.0.ffn_up.weight"].split()[4:] == ["Q8_0", "--tensor-type", "ffn_up=q8_0"]
    assert rows["token_embd.weight"].split()[1:5] == ["256", "×", "151669", "Q6_K"]
    plan = plan_quantization(embedding_gguf_256, "Q4_K_M", tensor_types=["ffn_up=q8_0"])
    source = read_model_file(embedding_gguf_256)
    assert lines[-1] == (f"Q4_K_M: 24 tensors, {plan.n_bytes / 2**20:.1f} MiB of tensor data, "
                         f"{plan.bits_per_weight:.2f} bits per weight "
                         f"(from {source.tensor_bytes / 2**20:.1f} MiB, 32.00 bits per weight)")
    assert list(tmp_path.iterdir()) == []


def test_cli_quantizes_with_explicit_types(embedding_gguf_256, tmp_path):
    out = tmp_path / "out.gguf"
    result = run("quantize", embedding_gguf_256, "q6_k", "-o", out, "--tensor-type", "attn_(q|k)=q8_0",
                 "--token-embedding-type", "Q4_K")
    assert result.exit_code == 0, result.output
    assert re.search(r"wrote .*out.gguf: Q6_K, [\d.]+ MiB, [\d.]+ bits per weight, in [\d.]+ s", result.stderr)
    types = written_types(out)
    assert types["token_embd.weight"] == Q.Q4_K and types["blk.1.attn_k.weight"] == Q.Q8_0
    assert types["blk.1.attn_v.weight"] == Q.Q6_K and types["blk.1.attn_output.weight"] == Q.Q6_K
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


@pytest.mark.parametrize("args, message", [
    (["{model}", "q4_km", "-o", "{tmp}/o.gguf"], "unknown quantization type 'q4_km'; valid: Q2_K, Q2_K_S"),
    (["{model}", "IQ2_XS", "-o", "{tmp}/o.gguf"], "IQ2_XS needs an importance matrix (blk.0.attn_k.weight"),
    (["{model}", "iq1_m", "-o", "{tmp}/o.gguf", "--tensor-type", "attn=q8_0"], "IQ1_M needs an importance matrix"),
    (["{tmp}/missing.gguf", "q4_k_m", "-o", "{tmp}/o.gguf"], "model file not found: {tmp}/missing.gguf"),
    (["{model}", "q4_k_m", "-o", "{tmp}/no/folder/o.gguf"], "cannot write {tmp}/no/folder/o.gguf"),
    (["{model}", "q4_k_m", "-o", "{tmp}"], "is a folder"),
    (["{model}", "q4_k_m", "-o", "{model}"], "is the input model"),
    (["{model}", "q4_k_m"], "give the file to write with -o/--output"),
    (["{model}", "q4_k_m", "--dry-run", "--recipe", "bumpy"], "unknown recipe 'bumpy'"),
    (["{model}", "q4_k_m", "--dry-run", "--recipe", "hybrid"], "use a hybrid type such as bf16_q4_k_m"),
    (["{model}", "q4_k_m", "--dry-run", "--tensor-type", "attn_v"], "is not REGEX=TYPE"),
    (["{model}", "q4_k_m", "--dry-run", "--output-tensor-type", "q7"], "unknown tensor type 'q7'"),
    (["{model}", "f16", "--dry-run", "--tensor-type", "attn_v=q8_0"], "F16 is not a quantized type"),
    (["{model}", "q4_k_m", "--dry-run", "--imatrix", "{tmp}/none.gguf"], "imatrix file not found"),
])
def test_cli_bad_input(args, message, embedding_gguf_256, tmp_path):
    fill = {"tmp": tmp_path, "model": embedding_gguf_256}
    before = sorted(embedding_gguf_256.parent.iterdir())
    result = run("quantize", *[a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(**fill) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [] and sorted(embedding_gguf_256.parent.iterdir()) == before


def test_cli_refuses_an_imatrix_of_another_model(embedding_gguf_256, imatrix_256, tmp_path):
    def moved(entries):  # as if from a model with more layers
        return {name.replace("blk.1.", "blk.7."): value for name, value in entries.items()}

    renamed = ImportanceMatrix(sums=moved(imatrix_256.matrix.sums), counts=moved(imatrix_256.matrix.counts))
    narrower = ImportanceMatrix(sums={n: s[:64] for n, s in imatrix_256.matrix.sums.items()},
                                counts=imatrix_256.matrix.counts)
    for matrix, message in [(renamed, "it has an entry for blk.7.attn_k.weight, which this model lacks"),
                            (narrower, "blk.0.attn_k.weight has 64 values, the model's rows have 256")]:
        path = write_imatrix(matrix, tmp_path / "other.gguf")
        result = run("quantize", embedding_gguf_256, "iq4_xs", "-o", tmp_path / "o.gguf", "--imatrix", path)
        assert result.exit_code == 2, result.output
        assert f"the imatrix does not match {embedding_gguf_256}: {message}" in result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other.gguf"]


def test_requantizing_is_refused(converted, embedding_ckpt_256):
    with pytest.raises(UserError, match=r"is already quantized \(token_embd.weight is Q8_0\)"):
        plan_quantization(converted(embedding_ckpt_256, "q8_0"), "q4_k_m")


def test_ctrl_c_leaves_nothing(embedding_gguf_256, tmp_path):
    """SIGINT during llama_model_quantize: the command stops at once and no output remains.

    The quantizer child holds at its first tensor with the output open, so the signal lands
    mid-file however fast the CPU is."""
    command = shutil.which("qwen3-gguf", path=os.path.dirname(sys.executable))
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "held"
    process = subprocess.Popen([command, "quantize", str(embedding_gguf_256), "q6_k", "-o", str(out / "o.gguf")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, **holding_quantizer(marker)})
    quantizer = held_quantizer_pid(marker, process)
    assert [p.name for p in out.iterdir() if p.name.endswith(".partial")], "llama.cpp has the output open"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Interrupted; nothing partial was left behind." in stderr.decode()
    wait_until_gone(quantizer)      # the killed child writes nothing more
    assert list(out.iterdir()) == []
