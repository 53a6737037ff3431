"""GGUF safety: 200 damaged copies of a valid model are refused before llama.cpp sees them.

The checker (`gguf_file.read_model_file`) must answer every damaged file with a one-line
UserError, never another exception; a mutant it accepts (a flipped bit in a float, a name)
is then loaded by llama.cpp in a child process, which must not crash.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from checkpoints import byte_to_unicode
from gguf import GGUFReader, GGUFWriter, PoolingType, TokenType

from qwen3_gguf.errors import UserError
from qwen3_gguf.gguf_file import read_model_file

N_EMBD, N_FF, N_HEAD, N_HEAD_KV, HEAD_DIM = 64, 128, 4, 2, 32
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_tiny_qwen3(path: Path) -> Path:
    """A complete Qwen3 embedding GGUF with a 260-token byte-level vocabulary (about 300 KB)."""
    alphabet = byte_to_unicode()
    tokens = [alphabet[b] for b in range(256)] + ["Ġt"] + SPECIAL_TOKENS
    types = [TokenType.NORMAL] * 257 + [TokenType.CONTROL] * len(SPECIAL_TOKENS)
    writer = GGUFWriter(path, arch="qwen3")
    writer.add_type("model")
    writer.add_name("tiny-qwen3")
    writer.add_file_type(0)
    writer.add_context_length(512)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_pooling_type(PoolingType.LAST)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t"])
    writer.add_eos_token_id(len(tokens) - len(SPECIAL_TOKENS))
    writer.add_add_eos_token(True)
    rng = np.random.default_rng(0)

    def tensor(name, *shape):
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    tensor("token_embd.weight", len(tokens), N_EMBD)
    for name, shape in [("attn_norm", (N_EMBD,)), ("attn_q", (N_HEAD * HEAD_DIM, N_EMBD)),
                        ("attn_k", (N_HEAD_KV * HEAD_DIM, N_EMBD)), ("attn_v", (N_HEAD_KV * HEAD_DIM, N_EMBD)),
                        ("attn_output", (N_EMBD, N_HEAD * HEAD_DIM)), ("attn_q_norm", (HEAD_DIM,)),
                        ("attn_k_norm", (HEAD_DIM,)), ("ffn_norm", (N_EMBD,)), ("ffn_gate", (N_FF, N_EMBD)),
                        ("ffn_up", (N_FF, N_EMBD)), ("ffn_down", (N_EMBD, N_FF))]:
        tensor(f"blk.0.{name}.weight", *shape)
    tensor("output_norm.weight", N_EMBD)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class Layout:
    """Byte positions of the parts of a GGUF file, from gguf's own reader."""

    def __init__(self, path: Path):
        reader = GGUFReader(path)
        self.size = path.stat().st_size
        self.parts: dict[tuple[str, int], int] = {}   # (field or tensor name, part index) → offset
        for field in list(reader.fields.values()) + [t.field for t in reader.tensors]:
            offset = field.offset
            for i, part in enumerate(field.parts):
                self.parts[(field.name, i)] = offset
                offset += part.nbytes
        self.tensor_table = min(t.field.offset for t in reader.tensors)
        self.data_start = reader.data_offset

    def at(self, name: str, part: int) -> int:
        return self.parts[(name, part)]


def _put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def structural_mutants(data: bytes, layout: Layout) -> dict[str, bytes]:
    """Damage to the container itself: every one of these must be refused."""
    mutants = {"magic": b"GGML" + data[4:]}
    for version in (0, 1, 4, 2**32 - 1):
        mutants[f"version {version}"] = _put(data, 4, "<I", version)
    n_tensors, n_keys = struct.unpack_from("<QQ", data, 8)
    for count in (n_tensors + 1, 1000, 2**32, 2**63, 2**64 - 1):
        mutants[f"tensor count {count}"] = _put(data, 8, "<Q", count)
    for count in (n_keys + 1, 1000, 2**40, 2**64 - 1):
        mutants[f"key count {count}"] = _put(data, 16, "<Q", count)
    tokens = "tokenizer.ggml.tokens"
    for count in (0, 261, 2**62, 2**64 - 1):   # parts: key length, key, value type, item type, count, ...
        mutants[f"token count {count}"] = _put(data, layout.at(tokens, 4), "<Q", count)
    for length in (2**20, 2**63, 2**64 - 1):
        mutants[f"name length {length}"] = _put(data, layout.at("general.name", 3), "<Q", length)
        mutants[f"key length {length}"] = _put(data, layout.at("general.name", 0), "<Q", length)
    for value_type in (13, 99, 2**32 - 1):
        mutants[f"value type {value_type}"] = _put(data, layout.at("qwen3.block_count", 2), "<I", value_type)
        mutants[f"item type {value_type}"] = _put(data, layout.at(tokens, 3), "<I", value_type)
    mutants["nested array"] = _put(data, layout.at(tokens, 3), "<I", 9)
    attn_q, embd = "blk.0.attn_q.weight", "token_embd.weight"  # parts: name length, name, n_dims, dims, type, offset
    for n_dims in (0, 5, 2**32 - 1):
        mutants[f"n_dims {n_dims}"] = _put(data, layout.at(attn_q, 2), "<I", n_dims)
    for dim in (0, 2**20, 2**40, 2**64 - 1):
        mutants[f"rows {dim}"] = _put(data, layout.at(embd, 3) + 8, "<Q", dim)
    as_q8_0 = _put(data, layout.at(attn_q, 4), "<I", 8)
    mutants["Q8_0 row length 63"] = _put(as_q8_0, layout.at(attn_q, 3), "<Q", 63)
    for ggml_type in (4, 5, 99, 2**31):
        mutants[f"tensor type {ggml_type}"] = _put(data, layout.at(attn_q, 4), "<I", ggml_type)
    last = "output_norm.weight"
    for name, offset in (("misaligned", 1), ("past the end", layout.size), ("huge", 2**64 - 1),
                         ("last byte", layout.size - layout.data_start - 4)):
        mutants[f"offset {name}"] = _put(data, layout.at(last, 5), "<Q", offset)
    mutants["duplicate tensor"] = _rename(data, layout, "blk.0.attn_k.weight", attn_q)
    mutants["duplicate key"] = _rename(data, layout, "qwen3.attention.key_length", "qwen3.attention.head_count")
    mutants["invalid UTF-8 key"] = _put(data, layout.at("general.name", 1), "<B", 0xFF)
    return mutants


def llama_cpp_aborts(data: bytes, layout: Layout) -> dict[str, bytes]:
    """Well-formed files that llama.cpp answers by aborting the process (found by fuzzing)."""
    tokens = "tokenizer.ggml.tokens"   # parts: ..., count, then (length, text) per token
    return {
        "duplicate token": _put(data, layout.at(tokens, 5 + 2 * ord("b") + 1), "<B", ord("a")),
        "513 layers": _put(data, layout.at("qwen3.block_count", 3), "<I", 513),
        "F16 norm weight": _put(data, layout.at("output_norm.weight", 4), "<I", 1),
        "rope size unlike head size": _put(data, layout.at("qwen3.rope.dimension_count", 3), "<I", 16),
        "KV head count as a float": _put(data, layout.at("qwen3.attention.head_count_kv", 2), "<I", 6),
    }


def _rename(data: bytes, layout: Layout, name: str, new_name: str) -> bytes:
    """`data` with the key or tensor `name` renamed in place to `new_name` of the same length."""
    assert len(new_name) == len(name)
    offset = layout.at(name, 1)
    return data[:offset] + new_name.encode() + data[offset + len(name):]


def truncations(data: bytes, layout: Layout, rng: random.Random) -> dict[str, bytes]:
    lengths = {0, 3, 4, 8, 23, 24, layout.tensor_table, layout.data_start, layout.size - 1, layout.size - 4}
    lengths |= {rng.randrange(24, layout.data_start) for _ in range(24)}
    lengths |= {rng.randrange(layout.data_start, layout.size) for _ in range(6)}
    return {f"truncated to {n}": data[:n] for n in sorted(lengths)}


def bit_flips(data: bytes, start: int, end: int, count: int, rng: random.Random, what: str) -> dict[str, bytes]:
    mutants = {}
    while len(mutants) < count:
        position, bit = rng.randrange(start, end), rng.randrange(8)
        out = bytearray(data)
        out[position] ^= 1 << bit
        mutants[f"{what} bit {bit} of byte {position}"] = bytes(out)
    return mutants


LOADER = """
import sys
from qwen3_gguf import Embedder, UserError
for path in sys.argv[1:]:
    print(path, flush=True)
    try:
        with Embedder(path, device="cpu") as embedder:
            embedder.encode(["hello there"])
        print("  loaded", flush=True)
    except UserError as exc:
        print("  refused:", exc, flush=True)
print("done", flush=True)
"""


def test_two_hundred_damaged_files_are_refused_or_harmless(tmp_path):
    original = write_tiny_qwen3(tmp_path / "tiny.gguf")
    assert read_model_file(original).kind == "embedding"
    data = original.read_bytes()
    layout = Layout(original)
    rng = random.Random(1234)

    must_refuse = {**structural_mutants(data, layout), **llama_cpp_aborts(data, layout),
                   **truncations(data, layout, rng)}
    n_flips = 200 - len(must_refuse)
    may_pass = {**bit_flips(data, 0, layout.tensor_table, n_flips // 2, rng, "header"),
                **bit_flips(data, layout.tensor_table, layout.data_start, n_flips - n_flips // 2, rng, "tensor table")}
    assert len(must_refuse) + len(may_pass) == 200

    accepted, not_refused, wrong_errors = [], [], []
    for i, (what, content) in enumerate({**must_refuse, **may_pass}.items()):
        path = tmp_path / f"mutant{i:03d}.gguf"
        path.write_bytes(content)
        try:
            read_model_file(path)
        except UserError as exc:
            message = str(exc)
            if "\n" in message or str(path) not in message:
                wrong_errors.append((what, message))
            path.unlink()
            continue
        except Exception as exc:  # noqa: BLE001 - anything else is a hole in the checker
            wrong_errors.append((what, f"{type(exc).__name__}: {exc}"))
            continue
        (not_refused if what in must_refuse else accepted).append((what, path))
    assert not wrong_errors, wrong_errors
    assert not not_refused, [what for what, _ in not_refused]

    # Whatever the checker let through must not take llama.cpp down.
    if accepted:
        child = subprocess.run([sys.executable, "-c", LOADER, *(str(p) for _, p in accepted)],
                               capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
        last = [line for line in child.stdout.splitlines() if not line.startswith("  ")][-1:]
        assert child.returncode == 0 and child.stdout.endswith("done\n"), (
            f"llama.cpp died (exit {child.returncode}) on {last}: {child.stderr[-2000:]}")
    assert len(accepted) < 60, f"{len(accepted)} of {len(may_pass)} bit flips were accepted"


def test_a_file_rewritten_in_place_or_replaced_is_read_again(embedding_gguf_64, reranker_tied_gguf, tmp_path):
    """Headers are kept between reads (a search reads the same ones dozens of times): never past a
    change of the file, whether it is overwritten where it is or replaced by a rename."""
    path = tmp_path / "model.gguf"
    path.write_bytes(embedding_gguf_64.read_bytes())
    assert read_model_file(path).kind == "embedding"
    path.write_bytes(reranker_tied_gguf.read_bytes())                 # the same inode, new bytes
    assert read_model_file(path).kind == "reranker"
    swap = tmp_path / "swap.gguf"
    swap.write_bytes(embedding_gguf_64.read_bytes())
    os.replace(swap, path)                                            # another inode under the same name
    assert read_model_file(path).kind == "embedding"
    data = bytearray(path.read_bytes())                                # the same size, one word changed
    at = data.index(b"general.architecture") + len(b"general.architecture") + 4 + 8
    assert data[at:at + 5] == b"qwen3"
    data[at:at + 5] = b"qwen2"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is a 'qwen2' model"):
        read_model_file(path)
    path.write_bytes(path.read_bytes()[:-64])                         # truncated where it lies: refused
    with pytest.raises(UserError, match="corrupted or truncated"):
        read_model_file(path)
