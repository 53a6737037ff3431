"""The Hugging Face → GGUF converter: safetensors reading, tensor naming, kind detection, bad
input, atomic writing, and converted files checked with gguf's reader and with llama.cpp.

Most tests use a "mini" checkpoint written here with numpy alone (a 263-token byte-level
vocabulary, so conversion and reading take milliseconds); the conftest fixtures with the real
151,669-token Qwen vocabulary are converted a few times and shared.
"""

from __future__ import annotations

import errno
import functools
import json
import shutil
import struct
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from checkpoints import QWEN_PRETOKENIZER_REGEX, byte_to_unicode
from gguf import (
    GGMLQuantizationType,
    GGUFReader,
    GGUFWriter,
    LlamaFileType,
    PoolingType,
    TokenType,
)
from gguf.quants import dequantize

from qwen3_gguf.atomic import TEMPORARY_SUFFIX
from qwen3_gguf.convert import ConversionResult, convert_checkpoint, detect_kind
from qwen3_gguf.convert.hparams import Qwen3HParams
from qwen3_gguf.convert.kind import decide_kind
from qwen3_gguf.convert.safetensors import read_header, read_weights, to_float32
from qwen3_gguf.convert.tensors import OUTPUT_TYPES, gguf_name, tensor_type
from qwen3_gguf.errors import UserError

F32, F16, BF16, Q8_0 = (GGMLQuantizationType[name] for name in ("F32", "F16", "BF16", "Q8_0"))

# --- helpers: a safetensors writer, a mini checkpoint, a faster GGUF reader --------------

SAFETENSORS_DTYPES = {
    np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<u2"): "BF16", np.dtype("<i8"): "I64"
}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """float32/float16 arrays as F32/F16, uint16 arrays as BF16 bit patterns, int64 as I64."""
    header, offset = {}, 0
    for name, array in tensors.items():
        dtype, end = SAFETENSORS_DTYPES[array.dtype], offset + array.nbytes
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, end]}
        offset = end
    blob = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(blob)) + blob)
        for array in tensors.values():
            file.write(np.ascontiguousarray(array).tobytes())


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """Truncate float32 values to their bfloat16 bit patterns."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


MINI_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "intermediate_size": 96, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000, "rope_scaling": None, "bos_token_id": 259, "vocab_size": 272,
}
MINI_ROWS = 272  # 263 tokens; rows 263..271 become [PAD] entries, as in real checkpoints
MINI_ADDED = [  # ids 259..262, with their `special` flags
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False)
]
MINI_LAYER_SHAPES = {
    "input_layernorm.weight": (64,), "self_attn.q_proj.weight": (128, 64),
    "self_attn.k_proj.weight": (64, 64), "self_attn.v_proj.weight": (64, 64),
    "self_attn.o_proj.weight": (64, 128), "self_attn.q_norm.weight": (32,),
    "self_attn.k_norm.weight": (32,), "post_attention_layernorm.weight": (64,),
    "mlp.gate_proj.weight": (96, 64), "mlp.up_proj.weight": (96, 64),
    "mlp.down_proj.weight": (64, 96),
}


def mini_tensors(kind: str, tied: bool) -> dict[str, np.ndarray]:
    """float32 weights of the mini model in HF naming (embedding: no "model." prefix)."""
    rng = np.random.default_rng(0)
    prefix = "" if kind == "embedding" else "model."
    shapes = {"embed_tokens.weight": (MINI_ROWS, 64), "norm.weight": (64,)}
    for layer in range(2):
        shapes |= {f"layers.{layer}.{name}": shape for name, shape in MINI_LAYER_SHAPES.items()}
    tensors = {prefix + name: rng.standard_normal(shape, np.float32)
               for name, shape in shapes.items()}
    if not tied:
        tensors["lm_head.weight"] = rng.standard_normal((MINI_ROWS, 64), np.float32)
    return tensors


def mini_tokenizer(kind: str) -> dict:
    """A tokenizer.json shaped like Qwen's: 256 byte tokens, "ye", "yes", "no", 4 added tokens."""
    alphabet = byte_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)} | {"ye": 256, "yes": 257, "no": 258}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    eos = {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
    appends_eos = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A"}}, eos],
                   "pair": [], "special_tokens": {}}
    split = {"type": "Split", "pattern": {"Regex": QWEN_PRETOKENIZER_REGEX},
             "behavior": "Isolated", "invert": False}
    return {
        "version": "1.0",
        "added_tokens": [
            {"id": 259 + i, "content": text, "special": special, "normalized": False}
            for i, (text, special) in enumerate(MINI_ADDED)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": byte_level if kind == "reranker" else appends_eos,
        "decoder": byte_level,
        "model": {"type": "BPE", "vocab": vocab, "merges": [["y", "e"], ["ye", "s"], ["n", "o"]]},
    }


def mini_checkpoint(folder: Path, *, kind="embedding", dtype="BF16", tied=True) -> Path:
    """Write a complete mini Qwen3 checkpoint of `kind` with weights stored as `dtype`."""
    folder.mkdir(parents=True, exist_ok=True)
    store = {"F32": lambda a: a, "F16": lambda a: a.astype(np.float16), "BF16": bf16_bits}[dtype]
    weights = {name: store(array) for name, array in mini_tensors(kind, tied).items()}
    write_safetensors(folder / "model.safetensors", weights)
    (folder / "config.json").write_text(json.dumps(MINI_CONFIG | {"tie_word_embeddings": tied}))
    (folder / "tokenizer.json").write_text(json.dumps(mini_tokenizer(kind)))
    tokenizer_config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    title = "Qwen3-Reranker-mini" if kind == "reranker" else "Qwen3-Embedding-mini"
    (folder / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n\n# {title}\n\ntext\n")
    return folder


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


class FastGGUFReader(GGUFReader):
    """gguf.GGUFReader parsing over a plain ndarray view of its memory map: the same result,
    about 3x faster (numpy.memmap's per-slice bookkeeping dominates a 151k-token vocabulary)."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, mapped: np.ndarray) -> None:
        self._data = mapped.view(np.ndarray)


def fields(reader: GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def tensors_by_name(reader: GGUFReader) -> dict:
    return {tensor.name: tensor for tensor in reader.tensors}


def numpy_shape(tensor) -> tuple[int, ...]:
    """GGUF lists dimensions innermost first."""
    return tuple(int(n) for n in reversed(tensor.shape))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMPORARY_SUFFIX))


# --- safetensors reader --------------------------------------------------------------------


def test_reader_round_trips_each_dtype(tmp_path):
    bits = np.array([[0x3F80, 0xC020], [0x3E20, 0x3B44]], dtype=np.uint16)
    f16 = np.array([0.5, -65504.0, 2.0**-10], dtype=np.float16)
    f32 = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    write_safetensors(tmp_path / "x.safetensors", {"b": bits, "h": f16, "f": f32})

    entries = read_header(tmp_path / "x.safetensors")
    assert {name: (e.dtype, e.shape) for name, e in entries.items()} == {
        "b": ("BF16", (2, 2)), "h": ("F16", (3,)), "f": ("F32", (3, 4))
    }
    b = entries["b"].map_rows(0, 2)
    assert b.dtype == np.uint16 and (b == bits).all()
    assert to_float32(b, "BF16").tolist() == [[1.0, -2.5], [0.15625, 0.00299072265625]]
    assert to_float32(entries["h"].map_rows(0, 1), "F16").tolist() == [[0.5, -65504.0, 2.0**-10]]
    assert (entries["f"].map_rows(0, 3) == f32).all()


def test_reader_maps_only_the_requested_rows(tmp_path):
    f32 = np.arange(20, dtype=np.float32).reshape(5, 4)
    write_safetensors(tmp_path / "x.safetensors", {"pad": np.zeros(3, np.float16), "f": f32})
    rows = read_header(tmp_path / "x.safetensors")["f"].map_rows(2, 4)
    assert rows.shape == (2, 4) and (rows == f32[2:4]).all()


def test_reader_follows_a_sharded_index(tmp_path):
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    write_safetensors(tmp_path / first, {"a": np.ones((2, 2), np.float32)})
    write_safetensors(tmp_path / second, {"b": bf16_bits(np.full(3, 2.0))})
    index = {"weight_map": {"a": first, "b": second}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    entries = read_weights(tmp_path)
    assert entries["a"].file.name == first and entries["b"].file.name == second
    assert to_float32(entries["b"].map_rows(0, 1), "BF16").tolist() == [[2.0, 2.0, 2.0]]


def test_reader_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.ones((4, 4), np.float32)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(UserError, match="tensor w is truncated"):
        read_header(path)


def test_reader_refuses_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"PK\x03\x04 a zip file, not safetensors")
    with pytest.raises(UserError, match="not a safetensors file"):
        read_weights(tmp_path)


# --- tensor names and types ------------------------------------------------------------------


@pytest.mark.parametrize("hf_name, expected", [
    ("embed_tokens.weight", "token_embd.weight"),
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
    ("model.layers.11.self_attn.q_proj.weight", "blk.11.attn_q.weight"),
    ("layers.3.self_attn.k_proj.weight", "blk.3.attn_k.weight"),
    ("layers.3.self_attn.v_proj.weight", "blk.3.attn_v.weight"),
    ("layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"),
    ("layers.3.self_attn.q_norm.weight", "blk.3.attn_q_norm.weight"),
    ("layers.3.self_attn.k_norm.weight", "blk.3.attn_k_norm.weight"),
    ("layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"),
    ("model.layers.27.mlp.gate_proj.weight", "blk.27.ffn_gate.weight"),
    ("layers.27.mlp.up_proj.weight", "blk.27.ffn_up.weight"),
    ("layers.27.mlp.down_proj.weight", "blk.27.ffn_down.weight"),
])
def test_tensor_names_map_to_llama_cpp_names(hf_name, expected):
    assert gguf_name(hf_name)[0] == expected


@pytest.mark.parametrize("hf_name", [
    "layers.0.mlp.experts.0.weight", "score.weight", "model.layers.0.self_attn.q_proj.bias",
    "layers.x.mlp.up_proj.weight",
])
def test_unknown_tensor_names_are_refused(hf_name):
    with pytest.raises(UserError, match=f"unknown tensor {hf_name} "):
        gguf_name(hf_name)


@pytest.mark.parametrize("outtype, name, shape, expected", [
    ("q8_0", "blk.0.attn_q.weight", (128, 64), Q8_0),
    ("q8_0", "token_embd.weight", (272, 64), Q8_0),  # llama.cpp's converter quantizes it too
    ("q8_0", "blk.0.attn_norm.weight", (64,), F32),
    ("q8_0", "blk.0.attn_q_norm.weight", (32,), F32),
    ("q8_0", "cls.output.weight", (2, 48), F16),  # rows not a multiple of 32: F16 fallback
    ("bf16", "blk.0.ffn_norm.weight", (64,), F32),
    ("bf16", "blk.0.ffn_up.weight", (96, 64), BF16),
    ("f16", "output_norm.weight", (64,), F32),
    ("f16", "blk.0.ffn_down.weight", (64, 96), F16),
    ("f32", "blk.0.ffn_down.weight", (64, 96), F32),
])
def test_tensor_types_follow_llama_cpp_converter(outtype, name, shape, expected):
    assert tensor_type(name, shape, OUTPUT_TYPES[outtype]) == expected


# --- kind detection --------------------------------------------------------------------------

CAUSAL_LM_LAYOUT = ["model.embed_tokens.weight", "model.norm.weight"]


@pytest.mark.parametrize("title, kind", [
    ("Qwen3-Reranker-4B", "reranker"), ("Qwen3-Embedding-8B", "embedding")
])
def test_kind_from_readme_title(tmp_path, title, kind):
    front_matter = "---\n# a YAML comment naming qwen3-embedding\ntags: [x]\n---\n"
    (tmp_path / "README.md").write_text(f"{front_matter}\n# {title}\n\n## Usage\n")
    reason = f"README.md title '# {title}'"
    assert decide_kind(tmp_path, {}, CAUSAL_LM_LAYOUT) == (kind, reason)


def test_kind_from_sentence_transformers_pooling_module(tmp_path):
    (tmp_path / "README.md").write_text("# Some fine-tune\n")
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))
    kind, reason = decide_kind(tmp_path, {}, CAUSAL_LM_LAYOUT)
    assert kind == "embedding" and "modules.json" in reason


def test_kind_from_folder_name(tmp_path):
    folder = tmp_path / "Qwen3-Reranker-0.6B"
    folder.mkdir()
    reason = "folder name 'Qwen3-Reranker-0.6B'"
    assert decide_kind(folder, {}, CAUSAL_LM_LAYOUT) == ("reranker", reason)


def test_kind_from_hugging_face_cache_folder(tmp_path):
    snapshot = tmp_path / "models--Qwen--Qwen3-Reranker-8B" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    reason = "folder name 'Qwen3-Reranker-8B'"
    assert decide_kind(snapshot, {}, CAUSAL_LM_LAYOUT) == ("reranker", reason)


def test_kind_from_config_name_or_path(tmp_path):
    config = {"_name_or_path": "Qwen/Qwen3-Embedding-4B"}
    reason = "config.json _name_or_path 'Qwen/Qwen3-Embedding-4B'"
    assert decide_kind(tmp_path, config, CAUSAL_LM_LAYOUT) == ("embedding", reason)


def test_kind_from_bare_qwen3model_layout(tmp_path):
    kind, reason = decide_kind(tmp_path, {}, ["embed_tokens.weight", "norm.weight"])
    assert kind == "embedding" and "no lm_head" in reason


@pytest.mark.parametrize("names", [CAUSAL_LM_LAYOUT, ["embed_tokens.weight", "lm_head.weight"]])
def test_undecidable_kind_asks_for_the_kind_option(tmp_path, names):
    with pytest.raises(UserError, match="pass --kind embedding or --kind reranker"):
        decide_kind(tmp_path, {}, names)


def test_detect_kind_on_the_fixtures(embedding_ckpt_64, reranker_tied_ckpt, reranker_untied_ckpt):
    embedding_reason = "README.md title '# Qwen3-Embedding-tiny'"
    reranker_reason = "README.md title '# Qwen3-Reranker-tiny'"
    assert detect_kind(embedding_ckpt_64) == ("embedding", embedding_reason)
    assert detect_kind(reranker_tied_ckpt) == ("reranker", reranker_reason)
    assert detect_kind(reranker_untied_ckpt) == ("reranker", reranker_reason)


def test_detect_kind_refuses_other_architectures(tmp_path):
    src = mini_checkpoint(tmp_path / "Qwen3-Reranker-but-not-really")
    edit_json(src / "config.json", lambda config: config.update(architectures=["Qwen2Model"]))
    with pytest.raises(UserError, match="architecture Qwen2Model is not Qwen3"):
        detect_kind(src)


def test_detect_kind_falls_back_to_the_tensor_layout(embedding_ckpt_64, tmp_path):
    no_readme = shutil.ignore_patterns("README.md")
    src = shutil.copytree(embedding_ckpt_64, tmp_path / "ckpt", ignore=no_readme)
    reason = "tensor names without 'model.' and no lm_head (a bare Qwen3Model)"
    assert detect_kind(src) == ("embedding", reason)


def test_explicit_kind_overrides_detection(tmp_path):
    src = mini_checkpoint(tmp_path / "ckpt", kind="reranker")
    result = convert_checkpoint(src, tmp_path / "out.gguf", kind="embedding")
    assert (result.kind, result.kind_reason) == ("embedding", "--kind embedding")
    assert fields(FastGGUFReader(result.path))["qwen3.pooling_type"] == PoolingType.LAST


# --- hyperparameters ---------------------------------------------------------------------------


def test_rope_settings_are_read_from_either_config_style():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
            "beta_fast": 32, "beta_slow": 1}  # the values llama.cpp assumes
    scaling = Qwen3HParams.from_config(MINI_CONFIG | {"rope_scaling": yarn}).rope_scaling
    assert (scaling.type.value, scaling.factor, scaling.original_context_length) == (
        "yarn", 4.0, 32768
    )
    # transformers 5 writes rope_parameters instead of rope_theta and rope_scaling
    v5 = {k: v for k, v in MINI_CONFIG.items() if k not in ("rope_theta", "rope_scaling")}
    linear = {"rope_type": "linear", "factor": 2, "rope_theta": 5e5}
    hparams = Qwen3HParams.from_config(v5 | {"rope_parameters": linear})
    assert (hparams.rope_scaling.type.value, hparams.rope_freq_base) == ("linear", 5e5)
    default = {"rope_type": "default", "rope_theta": 1e6}
    hparams = Qwen3HParams.from_config(v5 | {"rope_parameters": default})
    assert (hparams.rope_scaling, hparams.rope_freq_base, hparams.head_dim) == (None, 1e6, 32)


@pytest.mark.parametrize("rope_scaling, message", [
    ({"rope_type": "dynamic", "factor": 2.0}, "rope scaling type 'dynamic' is not supported"),
    ({"type": "longrope", "short_factor": [1.0]}, "rope scaling type 'longrope' is not supported"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
      "beta_fast": 16}, "rope scaling setting 'beta_fast' is not supported"),
    ({"rope_type": "yarn", "factor": 4.0}, "yarn rope scaling needs original_max_position"),
])
def test_unhandled_rope_scaling_is_refused(rope_scaling, message):
    with pytest.raises(UserError, match=message):
        Qwen3HParams.from_config(MINI_CONFIG | {"rope_scaling": rope_scaling})


def test_yarn_rope_scaling_reaches_the_gguf(tmp_path):
    src = mini_checkpoint(tmp_path / "ckpt")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    edit_json(src / "config.json", lambda config: config.update(rope_scaling=yarn))
    kv = fields(FastGGUFReader(convert_checkpoint(src, tmp_path / "out.gguf").path))
    assert kv["qwen3.rope.scaling.type"] == "yarn"
    assert kv["qwen3.rope.scaling.factor"] == 4.0
    assert kv["qwen3.rope.scaling.original_context_length"] == 512


# --- bad input -------------------------------------------------------------------------------


def _unsupported_dtype(src: Path) -> None:
    tensors = {name: bf16_bits(a) for name, a in mini_tensors("reranker", tied=True).items()}
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((96, 64), dtype=np.int64)
    write_safetensors(src / "model.safetensors", tensors)


def _sharded_with_a_missing_shard(src: Path) -> None:
    first = src / "model-00001-of-00002.safetensors"
    (src / "model.safetensors").rename(first)
    weight_map = dict.fromkeys(read_header(first), first.name)
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _config(**changes):
    return lambda src: edit_json(src / "config.json", lambda config: config.update(changes))


def _tokenizer(edit):
    return lambda src: edit_json(src / "tokenizer.json", edit)


BAD_CHECKPOINTS = {  # defect: (how to make it, the message it must produce)
    "missing config.json": (lambda src: (src / "config.json").unlink(), "missing config.json"),
    "missing tokenizer.json": (lambda src: (src / "tokenizer.json").unlink(),
                               "missing tokenizer.json"),
    "missing weights": (lambda src: (src / "model.safetensors").unlink(),
                        "no weights found .*model.safetensors or model.safetensors.index.json"),
    "missing shard": (_sharded_with_a_missing_shard, "model.safetensors.index.json names shard "
                      "model-00002-of-00002.safetensors, which is missing"),
    "other architecture": (_config(architectures=["LlamaForCausalLM"]),
                           "architecture LlamaForCausalLM is not Qwen3"),
    "unsupported dtype": (_unsupported_dtype, "tensor model.layers.0.mlp.up_proj.weight "
                          "in model.safetensors has dtype I64"),
    "no yes token": (_tokenizer(lambda tokenizer: tokenizer["model"]["vocab"].pop("yes")),
                     "tokenizer.json has no 'yes' token, needed for the reranker's score head"),
    "not the qwen2 pre-tokenizer": (
        _tokenizer(lambda tokenizer: tokenizer.update(pre_tokenizer={"type": "Whitespace"})),
        "pre-tokenizer is not Qwen2's"),
    "wrong head_dim": (_config(head_dim=16), r"tensor model.layers.0.self_attn.q_proj.weight "
                       r"has shape \[128, 64\], but config.json implies \[64, 64\]"),
    "missing layer": (_config(num_hidden_layers=3),
                      "the checkpoint has no layers.2.input_layernorm.weight tensor"),
    "extra layer": (_config(num_hidden_layers=1),
                    "the checkpoint has model.layers.1.*; config.json has 1 layers"),
    "untied without lm_head": (_config(tie_word_embeddings=False), "tie_word_embeddings is "
                               "false, but the checkpoint has no lm_head.weight"),
}


@pytest.mark.parametrize("defect", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_refused_in_one_line(tmp_path, defect):
    src = mini_checkpoint(tmp_path / "ckpt", kind="reranker")
    spoil, message = BAD_CHECKPOINTS[defect]
    spoil(src)
    with pytest.raises(UserError, match=message) as caught:
        convert_checkpoint(src, tmp_path / "out.gguf")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out.gguf").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("src, out, options, message", [
    ("nowhere", "out.gguf", {}, "checkpoint folder .*nowhere does not exist"),
    ("ckpt/config.json", "out.gguf", {}, "config.json is not a folder"),
    ("ckpt", "missing-dir/out.gguf", {}, "output folder .*missing-dir does not exist"),
    ("ckpt", ".", {}, "is a folder; give a file name"),
    ("ckpt", "out.gguf", {"outtype": "q4_k"},
     r"unknown output type 'q4_k' \(valid: f32, f16, bf16, q8_0\)"),
    ("ckpt", "out.gguf", {"kind": "classifier"},
     r"unknown kind 'classifier' \(valid: auto, embedding, reranker\)"),
])
def test_bad_arguments_are_refused(tmp_path, src, out, options, message):
    mini_checkpoint(tmp_path / "ckpt")
    with pytest.raises(UserError, match=message):
        convert_checkpoint(tmp_path / src, tmp_path / out, **options)


# --- atomic writing --------------------------------------------------------------------------


def _fail_writing_the_third_tensor(monkeypatch, error: BaseException) -> None:
    write, calls = GGUFWriter.write_tensor_data, []

    def failing_write(self, tensor, *args, **kwargs):
        calls.append(tensor.nbytes)
        if len(calls) == 3:
            raise error
        return write(self, tensor, *args, **kwargs)

    monkeypatch.setattr(GGUFWriter, "write_tensor_data", failing_write)


def test_interrupted_conversion_leaves_no_output(tmp_path, monkeypatch):
    src = mini_checkpoint(tmp_path / "ckpt")
    _fail_writing_the_third_tensor(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(src, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists() and not leftovers(tmp_path)


def test_failed_conversion_keeps_an_existing_output(tmp_path, monkeypatch):
    src = mini_checkpoint(tmp_path / "ckpt")
    (tmp_path / "out.gguf").write_bytes(b"the previous model")
    _fail_writing_the_third_tensor(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        convert_checkpoint(src, tmp_path / "out.gguf")
    assert (tmp_path / "out.gguf").read_bytes() == b"the previous model"
    assert not leftovers(tmp_path)


def test_disk_full_is_a_user_error_and_leaves_no_output(tmp_path, monkeypatch):
    src = mini_checkpoint(tmp_path / "ckpt")
    _fail_writing_the_third_tensor(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(UserError, match="disk full while writing .*out.gguf"):
        convert_checkpoint(src, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists() and not leftovers(tmp_path)


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    src = mini_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(UserError, match="not enough free space in .*0.1 GB, 0.0 GB are free"):
        convert_checkpoint(src, tmp_path / "out.gguf")
    assert not leftovers(tmp_path)


# --- conversions of the mini checkpoint -------------------------------------------------------

BIG_TYPES = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0}  # the type of every matrix
FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
              "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_mini_embedding_conversion(tmp_path, dtype, outtype):
    src = mini_checkpoint(tmp_path / "ckpt", dtype=dtype)
    out = tmp_path / "out.gguf"
    result = convert_checkpoint(src, out, outtype=outtype)
    reason = "README.md title '# Qwen3-Embedding-mini'"
    size = out.stat().st_size
    assert result == ConversionResult(out, "embedding", reason, outtype, 24, size)

    reader = FastGGUFReader(out)
    kv = fields(reader)
    assert kv["general.file_type"] == FILE_TYPES[outtype]
    assert kv["general.name"] == "Qwen3-Embedding-mini"
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == MINI_ROWS
    assert tokens[256:264] == ["ye", "yes", "no", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                               "<think>", "[PAD263]"]
    assert types[255:264] == [TokenType.NORMAL] * 4 + [TokenType.CONTROL] * 3 + [
        TokenType.USER_DEFINED, TokenType.UNUSED]
    assert kv["tokenizer.ggml.merges"] == ["y e", "ye s", "n o"]
    assert (kv["tokenizer.ggml.eos_token_id"], kv["tokenizer.ggml.eot_token_id"]) == (259, 261)
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.padding_token_id"]) == (259, 259)

    tensors = tensors_by_name(reader)
    assert "output.weight" not in tensors and "cls.output.weight" not in tensors
    for hf_name, values in mini_tensors("embedding", tied=True).items():
        tensor = tensors[gguf_name(hf_name)[0]]
        assert numpy_shape(tensor) == values.shape
        assert tensor.tensor_type == (F32 if values.ndim == 1 else BIG_TYPES[outtype])
        stored = {"F32": values, "F16": values.astype(np.float16).astype(np.float32),
                  "BF16": to_float32(bf16_bits(values), "BF16")}[dtype]
        _assert_holds(tensor, stored, exact_bf16=dtype == "BF16")


def _assert_holds(tensor, stored: np.ndarray, exact_bf16: bool) -> None:
    """The GGUF tensor holds `stored` (the source's values) as exactly as its type can."""
    data = np.asarray(tensor.data)
    if tensor.tensor_type == F32:
        np.testing.assert_array_equal(data.reshape(stored.shape), stored)
    elif tensor.tensor_type == F16:
        np.testing.assert_array_equal(data.reshape(stored.shape), stored.astype(np.float16))
    elif tensor.tensor_type == BF16:  # passed through, or rounded to within half a step
        decoded = to_float32(data.view(np.uint16), "BF16").reshape(stored.shape)
        np.testing.assert_allclose(decoded, stored, rtol=0 if exact_bf16 else 2**-8)
    else:  # Q8_0: within about half a quantization step (block max / 127) of the source
        decoded = dequantize(data, Q8_0).reshape(stored.shape)
        block_max = np.abs(stored.reshape(-1, 32)).max(axis=1, keepdims=True)
        assert (np.abs(decoded - stored).reshape(-1, 32) <= block_max / 127 * 0.6).all()


@pytest.mark.parametrize("tied", [True, False])
def test_mini_reranker_conversion(tmp_path, tied):
    src = mini_checkpoint(tmp_path / "ckpt", kind="reranker", tied=tied, dtype="F32")
    result = convert_checkpoint(src, tmp_path / "out.gguf", outtype="f32")
    reader = FastGGUFReader(result.path)
    kv, tensors = fields(reader), tensors_by_name(reader)
    assert (result.kind, result.n_tensors) == ("reranker", 25)
    assert kv["qwen3.pooling_type"] == PoolingType.RANK
    assert kv["qwen3.classifier.output_labels"] == ["yes", "no"]
    assert kv["tokenizer.chat_templates"] == ["rerank"]
    assert (kv["tokenizer.ggml.eos_token_id"], kv["tokenizer.ggml.add_eos_token"]) == (261, False)
    assert "output.weight" not in tensors
    head = mini_tensors("reranker", tied)["model.embed_tokens.weight" if tied else "lm_head.weight"]
    np.testing.assert_array_equal(tensors["cls.output.weight"].data, head[[257, 258]])


def test_sharded_checkpoint_converts_like_the_single_file(tmp_path):
    single, sharded = mini_checkpoint(tmp_path / "single"), mini_checkpoint(tmp_path / "sharded")
    tensors = mini_tensors("embedding", tied=True)
    names, weight_map = list(tensors), {}
    for index, chunk in enumerate((names[:10], names[10:])):
        shard = f"model-0000{index + 1}-of-00002.safetensors"
        write_safetensors(sharded / shard, {name: bf16_bits(tensors[name]) for name in chunk})
        weight_map |= dict.fromkeys(chunk, shard)
    (sharded / "model.safetensors").unlink()
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    one = convert_checkpoint(single, tmp_path / "single.gguf", outtype="bf16").path.read_bytes()
    two = convert_checkpoint(sharded, tmp_path / "sharded.gguf", outtype="bf16").path.read_bytes()
    assert one == two


def test_progress_bar_goes_to_stderr_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    convert_checkpoint(mini_checkpoint(tmp_path / "ckpt"), tmp_path / "out.gguf", progress=True)
    captured = capsys.readouterr()
    assert "Converting" in captured.err and captured.out == ""


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    convert_checkpoint(mini_checkpoint(tmp_path / "ckpt"), tmp_path / "out.gguf", progress=True)
    assert capsys.readouterr().err == ""


# --- conversions of the real-vocabulary fixtures ---------------------------------------------

REAL_CONVERSIONS = {  # name: (checkpoint fixture, outtype), converted once per module
    "embedding-f16": ("embedding_ckpt_64", "f16"),
    "embedding-q8_0": ("embedding_ckpt_64", "q8_0"),
    "reranker-tied-f32": ("reranker_tied_ckpt", "f32"),
    "reranker-untied-bf16": ("reranker_untied_ckpt", "bf16"),
}


@pytest.fixture(scope="module")
def converted(embedding_ckpt_64, reranker_tied_ckpt, reranker_untied_ckpt, tmp_path_factory):
    """name -> (checkpoint folder, ConversionResult) for REAL_CONVERSIONS, each done once."""
    checkpoints = {"embedding_ckpt_64": embedding_ckpt_64, "reranker_tied_ckpt": reranker_tied_ckpt,
                   "reranker_untied_ckpt": reranker_untied_ckpt}
    out_dir = tmp_path_factory.mktemp("converted")

    @functools.cache
    def convert(name: str) -> tuple[Path, ConversionResult]:
        fixture, outtype = REAL_CONVERSIONS[name]
        src = checkpoints[fixture]
        return src, convert_checkpoint(src, out_dir / f"{name}.gguf", outtype=outtype)

    return convert


@pytest.fixture(scope="module")
def readers(converted):
    """name -> FastGGUFReader of that conversion, parsed once (a few seconds each)."""
    return functools.cache(lambda name: FastGGUFReader(converted(name)[1].path))


def source_tensors(folder: Path) -> dict:
    """The checkpoint's tensors as torch loads them: the independent oracle for values."""
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def as_bits(tensor) -> np.ndarray:
    """The 16-bit patterns of a torch bfloat16 tensor."""
    import torch

    return tensor.view(torch.int16).numpy().view(np.uint16)


def test_real_embedding_metadata(converted, readers):
    from tokenizers import Tokenizer

    src, _ = converted("embedding-f16")
    config = json.loads((src / "config.json").read_text())
    kv = fields(readers("embedding-f16"))
    expected = {
        "general.architecture": "qwen3",
        "general.name": "Qwen3-Embedding-tiny",
        "general.file_type": LlamaFileType.MOSTLY_F16,
        "general.quantization_version": 2,
        "qwen3.context_length": config["max_position_embeddings"],
        "qwen3.embedding_length": config["hidden_size"],
        "qwen3.block_count": config["num_hidden_layers"],
        "qwen3.feed_forward_length": config["intermediate_size"],
        "qwen3.attention.head_count": config["num_attention_heads"],
        "qwen3.attention.head_count_kv": config["num_key_value_heads"],
        "qwen3.attention.key_length": config["head_dim"],
        "qwen3.attention.value_length": config["head_dim"],
        "qwen3.rope.dimension_count": config["head_dim"],
        "qwen3.rope.freq_base": config["rope_theta"],
        "qwen3.pooling_type": PoolingType.LAST,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.eos_token_id": 151643,
        "tokenizer.ggml.eot_token_id": 151645,
        "tokenizer.ggml.bos_token_id": 151643,
        "tokenizer.ggml.padding_token_id": 151643,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": True,
    }
    assert {key: kv.get(key) for key in expected} == expected
    assert config["head_dim"] != config["hidden_size"] // config["num_attention_heads"]
    assert kv["qwen3.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert "qwen3.classifier.output_labels" not in kv and "tokenizer.chat_templates" not in kv

    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 151_669 and len(kv["tokenizer.ggml.merges"]) == 151_387
    assert tokens == [hf.id_to_token(i) for i in range(151_669)]
    assert set(types[:151_643]) == {TokenType.NORMAL}
    special = {token.content: token.special for token in hf.get_added_tokens_decoder().values()}
    for token in tokens[151_643:]:
        looks_special = token.startswith("<|") and token.endswith("|>")
        want = TokenType.CONTROL if special[token] or looks_special else TokenType.USER_DEFINED
        assert types[tokens.index(token)] == want, token
    assert types[tokens.index("<think>")] == TokenType.USER_DEFINED


@pytest.mark.parametrize("name, big_type", [
    ("embedding-f16", "F16"), ("reranker-untied-bf16", "BF16")
])
def test_real_tensor_names_shapes_and_types(converted, readers, name, big_type):
    src, result = converted(name)
    source = source_tensors(src)
    tensors = tensors_by_name(readers(name))
    expected_names = {gguf_name(hf_name)[0] for hf_name in source} - {"output.weight"}
    if result.kind == "reranker":
        expected_names.add("cls.output.weight")
    assert set(tensors) == expected_names and result.n_tensors == len(expected_names)
    for hf_name, values in source.items():
        if hf_name != "lm_head.weight":
            tensor = tensors[gguf_name(hf_name)[0]]
            assert numpy_shape(tensor) == tuple(values.shape)
            matrix_type = GGMLQuantizationType[big_type]
            assert tensor.tensor_type == (F32 if values.ndim == 1 else matrix_type)


def test_real_f16_values_match_the_source(converted, readers):
    import torch

    src, _ = converted("embedding-f16")
    tensors = tensors_by_name(readers("embedding-f16"))
    for hf_name, values in source_tensors(src).items():
        tensor = tensors[gguf_name(hf_name)[0]]
        want = values.float() if tensor.tensor_type == F32 else values.to(torch.float16)
        np.testing.assert_array_equal(np.asarray(tensor.data).reshape(values.shape), want.numpy())


def test_real_bf16_is_bit_exact(converted, readers):
    src, _ = converted("reranker-untied-bf16")
    tensors = tensors_by_name(readers("reranker-untied-bf16"))
    for hf_name, values in source_tensors(src).items():
        if values.ndim == 2 and hf_name != "lm_head.weight":
            data = np.asarray(tensors[gguf_name(hf_name)[0]].data).view(np.uint16)
            np.testing.assert_array_equal(data.reshape(values.shape), as_bits(values))


@pytest.mark.parametrize("name, head", [
    ("reranker-tied-f32", "model.embed_tokens.weight"), ("reranker-untied-bf16", "lm_head.weight")
])
def test_real_rerank_head_is_the_yes_and_no_rows(converted, readers, name, head):
    from tokenizers import Tokenizer

    src, result = converted(name)
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    rows = source_tensors(src)[head][[hf.token_to_id("yes"), hf.token_to_id("no")]]
    cls = np.asarray(tensors_by_name(readers(name))["cls.output.weight"].data)
    if result.outtype == "f32":
        np.testing.assert_array_equal(cls, rows.float().numpy())
    else:
        np.testing.assert_array_equal(cls.view(np.uint16), as_bits(rows))

    kv = fields(readers(name))
    assert kv["qwen3.classifier.output_labels"] == ["yes", "no"]
    assert kv["qwen3.pooling_type"] == PoolingType.RANK
    assert kv["tokenizer.ggml.eos_token_id"] == 151645
    assert kv["tokenizer.ggml.add_eos_token"] is False
    template = kv["tokenizer.chat_template.rerank"]
    assert template.startswith("<|im_start|>system\nJudge whether the Document meets the")
    assert "<Query>: {query}\n<Document>: {document}<|im_end|>" in template
    assert template.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


# --- llama.cpp accepts the files -------------------------------------------------------------

_SILENT_LOG = None  # the ctypes callback must outlive every llama.cpp call


@pytest.fixture(scope="module")
def llama():
    import llama_cpp

    global _SILENT_LOG
    if _SILENT_LOG is None:
        _SILENT_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_SILENT_LOG, None)
    llama_cpp.llama_backend_init()
    return llama_cpp


@contextmanager
def loaded_model(llama, path: Path):
    params = llama.llama_model_default_params()
    params.vocab_only = False
    model = llama.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp refused {path.name}"
    try:
        yield model
    finally:
        llama.llama_model_free(model)


def llama_tokenize(llama, vocab, text: str) -> list[int]:
    data = text.encode()
    buffer = (llama.llama_token * 512)()
    count = llama.llama_tokenize(vocab, data, len(data), buffer, 512, False, False)
    return list(buffer[:count])


TEXTS = [
    "Hello, world!",
    "What is the capital of France?",
    "北京是中华人民共和国的首都。",
    "emoji 😀🎉👍🏽 and 🤖",
    "def f(x):\n    return x ** 2\n\n",
    "I'm sure they'll say it's fine, we've done it.",
    "   leading and trailing spaces   ",
    "Pi is 3.14159265 and 1,000,000 is big",
]


@pytest.mark.parametrize("name", list(REAL_CONVERSIONS))
def test_llama_cpp_loads_the_conversion_and_tokenizes_like_hf(converted, llama, name):
    from tokenizers import Tokenizer

    src, result = converted(name)
    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    is_embedding = result.kind == "embedding"
    with loaded_model(llama, result.path) as model:
        vocab = llama.llama_model_get_vocab(model)
        assert llama.llama_vocab_n_tokens(vocab) == 151_669
        assert llama.llama_model_n_embd(model) == 64
        assert llama.llama_model_n_cls_out(model) == (1 if is_embedding else 2)
        assert llama.llama_vocab_get_add_eos(vocab) == is_embedding
        assert llama.llama_vocab_eos(vocab) == (151643 if is_embedding else 151645)
        for text in TEXTS:
            want = hf.encode(text, add_special_tokens=False).ids
            assert llama_tokenize(llama, vocab, text) == want, text


def test_llama_cpp_loads_a_padded_vocabulary(tmp_path, llama):
    src = mini_checkpoint(tmp_path / "ckpt", kind="reranker", tied=False)
    result = convert_checkpoint(src, tmp_path / "out.gguf", outtype="q8_0")
    with loaded_model(llama, result.path) as model:
        vocab = llama.llama_model_get_vocab(model)
        assert llama.llama_vocab_n_tokens(vocab) == MINI_ROWS
        assert llama_tokenize(llama, vocab, "yes no") == [257, 32, 258]  # "Ġ" is byte 32 here
