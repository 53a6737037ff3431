"""Importance matrices collected by llama.cpp against sums computed with transformers hooks."""

from __future__ import annotations

import ctypes
import json
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGUFReader, GGUFValueType

from qwen3_gguf import UserError
from qwen3_gguf.cli import cli
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION
from qwen3_gguf.quantization.imatrix import collect_imatrix, load_calibration, reranker_sequences
from qwen3_gguf.quantization.importance import ImportanceMatrix, read_imatrix, write_imatrix

HF_PROJECTIONS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def squared_inputs_by_hooks(oracle, token_sequences) -> tuple[dict[str, np.ndarray], int]:
    """Per GGUF weight name: the sum over all tokens of each input column squared, from
    forward hooks on the transformers model, one sequence at a time (no padding)."""
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(oracle.model.layers):
        for module_name, gguf_name in HF_PROJECTIONS.items():
            def hook(module, inputs, output, name=f"blk.{index}.{gguf_name}.weight"):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            handles.append(layer.get_submodule(module_name).register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for ids in token_sequences:
                oracle.model(input_ids=torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return {name: value.numpy() for name, value in sums.items()}, sum(map(len, token_sequences))


def test_sums_match_transformers_hooks(imatrix_256, calibration_file, embedding_oracle_256):
    """Every projection of every block: in_sum2 equals the hooks' sums, counts the token count."""
    sequences = []  # tokenized by transformers, formatted as the model card does
    for record in map(json.loads, calibration_file.read_text(encoding="utf-8").splitlines()):
        if "query" in record:
            instruction = record.get("instruction", DEFAULT_INSTRUCTION)
            sequences.append(embedding_oracle_256.token_ids(f"Instruct: {instruction}\nQuery:{record['query']}"))
        sequences.append(embedding_oracle_256.token_ids(record["document"]))
    expected, n_tokens = squared_inputs_by_hooks(embedding_oracle_256, sequences)

    matrix = imatrix_256.matrix
    assert sorted(matrix.sums) == sorted(expected) and len(expected) == 14
    errors = {}
    for name, sums in expected.items():
        errors[name] = np.linalg.norm(matrix.sums[name] - sums) / np.linalg.norm(sums)
        assert matrix.counts[name] == n_tokens
    print(f"relative error of in_sum2, worst {max(errors, key=errors.get)}: {max(errors.values()):.2e}")
    assert max(errors.values()) <= 1e-3
    assert imatrix_256.n_tokens == n_tokens
    assert matrix.chunk_size == 256 and matrix.chunk_count >= 2  # packed into several decodes


def test_round_trip(imatrix_256, tmp_path):
    matrix = imatrix_256.matrix
    path = write_imatrix(matrix, tmp_path / "imatrix.gguf")
    again = read_imatrix(path)
    assert again.counts == matrix.counts
    assert again.datasets == matrix.datasets and (again.chunk_count, again.chunk_size) == (matrix.chunk_count, 256)
    for name, sums in matrix.sums.items():
        np.testing.assert_array_equal(again.sums[name], sums)
    assert [p.name for p in tmp_path.iterdir()] == ["imatrix.gguf"]  # no partial file left


def test_file_is_what_llama_imatrix_writes(imatrix_256, tmp_path):
    """The keys, value types and tensor shapes llama-imatrix writes and common_imatrix_load reads."""
    path = write_imatrix(imatrix_256.matrix, tmp_path / "imatrix.gguf")
    reader = GGUFReader(path)
    fields = {name: field for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert set(fields) == {"general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"}
    assert fields["general.type"].contents() == "imatrix"
    assert fields["imatrix.chunk_count"].types == [GGUFValueType.UINT32]
    assert fields["imatrix.chunk_size"].types == [GGUFValueType.UINT32]
    assert fields["imatrix.datasets"].types == [GGUFValueType.ARRAY, GGUFValueType.STRING]
    tensors = {t.name: t for t in reader.tensors}
    sums, counts = tensors["blk.0.ffn_down.weight.in_sum2"], tensors["blk.0.ffn_down.weight.counts"]
    assert list(sums.shape) == [512, 1] and list(counts.shape) == [1, 1]  # ne0 = columns, ne1 = matrices
    assert counts.data.reshape(-1)[0] == imatrix_256.matrix.counts["blk.0.ffn_down.weight"]


def test_llama_cpp_parses_the_file(imatrix_256, tmp_path):
    """llama.cpp's own GGUF reader (what llama-quantize loads imatrices with) accepts the file."""
    from qwen3_gguf.runtime import load_ggml

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    ggml = load_ggml()
    ggml.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    ggml.gguf_init_from_file.restype = ctypes.c_void_p
    ggml.gguf_find_key.argtypes, ggml.gguf_find_key.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int64
    ggml.gguf_get_val_u32.argtypes, ggml.gguf_get_val_u32.restype = [ctypes.c_void_p, ctypes.c_int64], ctypes.c_uint32
    ggml.gguf_get_kv_type.argtypes, ggml.gguf_get_kv_type.restype = [ctypes.c_void_p, ctypes.c_int64], ctypes.c_int
    ggml.gguf_get_n_tensors.argtypes, ggml.gguf_get_n_tensors.restype = [ctypes.c_void_p], ctypes.c_int64
    ggml.gguf_free.argtypes = [ctypes.c_void_p]

    path = write_imatrix(imatrix_256.matrix, tmp_path / "imatrix.gguf")
    context = ggml.gguf_init_from_file(str(path).encode(), InitParams(True, None))
    assert context
    try:
        gguf_type_uint32 = 4
        chunk_count = ggml.gguf_find_key(context, b"imatrix.chunk_count")
        assert ggml.gguf_get_kv_type(context, chunk_count) == gguf_type_uint32
        assert ggml.gguf_get_val_u32(context, chunk_count) == imatrix_256.matrix.chunk_count
        assert ggml.gguf_find_key(context, b"imatrix.datasets") >= 0
        assert ggml.gguf_get_n_tensors(context) == 2 * len(imatrix_256.matrix.sums)
    finally:
        ggml.gguf_free(context)


def test_legacy_dat_file(tmp_path, imatrix_256):
    """The old llama-imatrix format: values are mean squares × ncall; the importance is values / ncall."""
    means = imatrix_256.matrix.importance()
    ncall = 7
    blob = struct.pack("<i", len(means))
    for name, values in means.items():
        blob += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size)
        blob += (values * ncall).astype("<f4").tobytes()
    blob += struct.pack("<i", 3) + struct.pack("<i", 8) + b"wiki.txt"
    (tmp_path / "imatrix.dat").write_bytes(blob)

    legacy = read_imatrix(tmp_path / "imatrix.dat")
    assert legacy.datasets == ["wiki.txt"] and legacy.chunk_count == 3
    for name, values in legacy.importance().items():
        np.testing.assert_allclose(values, means[name], rtol=1e-6)


def test_reranker_calibration_is_full_rerank_prompts(reranker_tied, reranker_tied_gguf, calibration_file,
                                                     tmp_path):
    """Each query with its own and with the next document, tokenized as Reranker scores them."""
    three = tmp_path / "three.jsonl"
    three.write_text("".join(calibration_file.read_text(encoding="utf-8").splitlines(keepends=True)[:4]),
                     encoding="utf-8")  # three pairs and a document without a query
    items, _ = load_calibration([three])
    pairs = [item for item in items if item.query and item.document]
    expected = []
    for item, neighbour in zip(pairs, pairs[1:] + pairs[:1]):
        instruction = item.instruction or DEFAULT_INSTRUCTION
        expected += [reranker_tied.tokenize(item.query, item.document, instruction)[0],
                     reranker_tied.tokenize(item.query, neighbour.document, instruction)[0]]
    assert list(reranker_sequences(reranker_tied, items)) == expected

    result = collect_imatrix(reranker_tied_gguf, [three], chunk_tokens=256, device="cpu")
    assert set(result.matrix.counts.values()) == {sum(map(len, expected))}
    assert all(name.startswith("blk.") for name in result.matrix.sums)  # never the cls.output head


def test_chunks_limit_the_collection(embedding_gguf_64, calibration_file, imatrix_256):
    first = collect_imatrix(embedding_gguf_64, [calibration_file], chunk_tokens=128, max_chunks=1, device="cpu")
    assert first.matrix.chunk_count == 1 and first.matrix.chunk_size == 128
    assert 0 < first.n_tokens <= 128 < imatrix_256.n_tokens  # the whole calibration, in the fixture
    assert set(first.matrix.counts.values()) == {first.n_tokens}


def test_default_calibration_set_is_multilingual_and_large():
    items, datasets = load_calibration()
    text = "".join((item.query or "") + (item.document or "") for item in items)
    assert datasets == ["qwen3-gguf:calibration.jsonl"]
    assert len(text.encode()) > 300_000
    scripts = {"Han": (0x4E00, 0x9FFF), "kana": (0x3040, 0x30FF), "Arabic": (0x0600, 0x06FF),
               "Devanagari": (0x0900, 0x097F), "Cyrillic": (0x0400, 0x04FF), "Hangul": (0xAC00, 0xD7A3)}
    present = {script for script, (low, high) in scripts.items() if any(low <= ord(ch) <= high for ch in text)}
    assert present == set(scripts)
    assert "ä" in text and "ñ" in text  # German and Spanish
    assert any("def " in (item.document or "") for item in items)
    assert sum(1 for item in items if item.query and item.document) > 200


# --- bad input -----------------------------------------------------------------------------------


def test_cli_writes_the_imatrix(embedding_gguf_64, calibration_file, tmp_path):
    result = run("imatrix", embedding_gguf_64, "-o", tmp_path / "im.gguf", "--calibration", calibration_file,
                 "--chunks", 1, "--chunk-tokens", 128)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "1 chunks" in result.stderr
    assert read_imatrix(tmp_path / "im.gguf").chunk_count == 1


@pytest.mark.parametrize("args, message", [
    (["missing.gguf", "-o", "{tmp}/im.gguf"], "model file not found: missing.gguf"),
    (["{model}", "-o", "{tmp}/no/such/folder/im.gguf"], "the folder {tmp}/no/such/folder does not exist"),
    (["{model}", "-o", "{tmp}"], "is a folder"),
    (["{model}", "-o", "{tmp}/im.gguf", "--calibration", "{tmp}/nothing.jsonl"], "calibration file not found"),
    (["{model}", "-o", "{tmp}/im.gguf", "--chunk-tokens", "16"], "--chunk-tokens must be at least 128"),
])
def test_cli_bad_input(args, message, embedding_gguf_64, tmp_path):
    fill = {"tmp": tmp_path, "model": embedding_gguf_64}
    result = run("imatrix", *[a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(**fill) in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("line, message", [
    ("not json", "calibration.jsonl:1: not a JSON object"),
    ('{"query": ""}', "'query' must be a non-empty string"),
    ('{"title": "x"}', "a record needs a 'query', a 'document' or both"),
])
def test_bad_calibration_records(tmp_path, line, message):
    (tmp_path / "calibration.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_calibration([tmp_path / "calibration.jsonl"])


def test_reranker_needs_pairs(reranker_tied_gguf, tmp_path):
    (tmp_path / "docs.txt").write_text("first paragraph\n\nsecond paragraph\n", encoding="utf-8")
    with pytest.raises(UserError, match="query/document pairs"):
        collect_imatrix(reranker_tied_gguf, [tmp_path / "docs.txt"], device="cpu")


@pytest.mark.parametrize("content, message", [
    (b"GGUF" + b"\0" * 40, "corrupted or truncated GGUF"),
    (struct.pack("<i", 2) + struct.pack("<i", 5) + b"blk.0", "nor a complete legacy .dat imatrix"),
    (struct.pack("<i", 0), "not an imatrix"),
])
def test_damaged_imatrix_files(tmp_path, content, message):
    (tmp_path / "imatrix.gguf").write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_imatrix(tmp_path / "imatrix.gguf")


def test_a_model_is_not_an_imatrix(embedding_gguf_64):
    with pytest.raises(UserError, match="is not an imatrix .general.type is 'model'"):
        read_imatrix(embedding_gguf_64)


def test_interrupted_collection_writes_nothing(embedding_gguf_64, calibration_file, tmp_path, monkeypatch):
    """A Ctrl-C arrives inside llama.cpp's eval callback: it must stop the run, not be swallowed."""
    from qwen3_gguf.quantization import imatrix

    calls = []

    def interrupt(self, name, rows):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(imatrix._SquaredInputSums, "add", interrupt)
    result = run("imatrix", embedding_gguf_64, "-o", tmp_path / "im.gguf", "--calibration", calibration_file)
    assert result.exit_code == 130
    assert "Interrupted" in result.stderr
    assert len(calls) == 3  # stopped in the first decode
    assert list(tmp_path.iterdir()) == []


def test_importance_is_the_mean_square():
    matrix = ImportanceMatrix(sums={"a": np.array([4.0, 8.0], np.float32), "b": np.array([1.0], np.float32)},
                              counts={"a": 4, "b": 0})
    importance = matrix.importance()
    np.testing.assert_array_equal(importance["a"], [1.0, 2.0])
    np.testing.assert_array_equal(importance["b"], [1.0])  # no tokens seen: equal weights
