"""The GGUF key/value header of a Qwen3 embedding or reranker model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import GGML_QUANT_VERSION, GGUFType, GGUFWriter, PoolingType

from ..prompts import DEFAULT_INSTRUCTION, RERANK_PREFIX, RERANK_SUFFIX, rerank_body
from .hparams import Qwen3HParams
from .tensors import RERANK_LABELS, OutputType
from .vocab import Vocabulary

ARCHITECTURE = "qwen3"
END_OF_TURN = "<|im_end|>"

# The Qwen3-Reranker prompt, with the {query} and {document} placeholders llama.cpp fills in.
RERANK_TEMPLATE = RERANK_PREFIX + rerank_body("{query}", "{document}", DEFAULT_INSTRUCTION) + RERANK_SUFFIX


@dataclass(frozen=True)
class KindSettings:
    pooling: PoolingType
    eos_text: str  # the end-of-sequence token, looked up in the vocabulary by its text
    add_eos: bool


# The embedding model pools the <|endoftext|> that its tokenizer appends; the reranker's
# prompt ends in text and its sequences end with <|im_end|>.
KIND_SETTINGS = {
    "embedding": KindSettings(PoolingType.LAST, "<|endoftext|>", add_eos=True),
    "reranker": KindSettings(PoolingType.RANK, END_OF_TURN, add_eos=False),
}


def add_metadata(
    writer: GGUFWriter,
    *,
    name: str,
    kind: str,
    hparams: Qwen3HParams,
    vocab: Vocabulary,
    output_type: OutputType,
    config: dict[str, Any],
    tokenizer_config: dict[str, Any],
) -> None:
    """Write every key llama.cpp reads for a Qwen3 embedding or reranker model."""
    settings = KIND_SETTINGS[kind]
    writer.add_type(GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(output_type.file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)

    writer.add_context_length(hparams.context_length)
    writer.add_embedding_length(hparams.embedding_length)
    writer.add_block_count(hparams.block_count)
    writer.add_feed_forward_length(hparams.feed_forward_length)
    writer.add_head_count(hparams.head_count)
    writer.add_head_count_kv(hparams.head_count_kv)
    writer.add_key_length(hparams.head_dim)
    writer.add_value_length(hparams.head_dim)
    writer.add_rope_dimension_count(hparams.head_dim)
    writer.add_rope_freq_base(hparams.rope_freq_base)
    writer.add_layer_norm_rms_eps(hparams.rms_norm_eps)
    if scaling := hparams.rope_scaling:
        writer.add_rope_scaling_type(scaling.type)
        writer.add_rope_scaling_factor(scaling.factor)
        if scaling.original_context_length is not None:
            writer.add_rope_scaling_orig_ctx_len(scaling.original_context_length)

    writer.add_pooling_type(settings.pooling)
    if kind == "reranker":
        writer.add_classifier_output_labels(list(RERANK_LABELS))
        writer.add_chat_template([{"name": "rerank", "template": RERANK_TEMPLATE}])

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(vocab.require(settings.eos_text, f"the {kind} end-of-sequence token"))
    writer.add_eot_token_id(vocab.require(END_OF_TURN, "the end-of-turn token"))
    if (bos := _configured_token_id("bos", vocab, config, tokenizer_config)) is not None:
        writer.add_bos_token_id(bos)
    if (pad := _configured_token_id("pad", vocab, config, tokenizer_config)) is not None:
        writer.add_pad_token_id(pad)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(settings.add_eos)


def _configured_token_id(
    role: str, vocab: Vocabulary, config: dict[str, Any], tokenizer_config: dict[str, Any]
) -> int | None:
    """The id of the `role` token named in tokenizer_config.json, else given in config.json."""
    text = tokenizer_config.get(f"{role}_token")
    if isinstance(text, dict):
        text = text.get("content")
    if isinstance(text, str) and (token_id := vocab.id_of(text)) is not None:
        return token_id
    token_id = config.get(f"{role}_token_id")
    return token_id if isinstance(token_id, int) and 0 <= token_id < len(vocab.tokens) else None
