"""config.json → the Qwen3 hyperparameters that the GGUF header carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import RopeScalingType

from ..errors import UserError

QWEN3_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3Model")

# Keys every Qwen3 config.json carries; without them the model shape is unknown.
REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

# Rope-scaling settings understood here; others would be silently dropped, so they are refused.
ROPE_SCALING_KEYS = (
    "rope_type", "type", "factor", "original_max_position_embeddings", "rope_theta"
)
# YaRN settings llama.cpp's qwen3 loader does not read: accepted only at the values it assumes.
YARN_BUILTINS = {"beta_fast": 32.0, "beta_slow": 1.0}


@dataclass(frozen=True)
class RopeScaling:
    type: RopeScalingType
    factor: float
    original_context_length: int | None  # YaRN only


@dataclass(frozen=True)
class Qwen3HParams:
    context_length: int
    embedding_length: int
    block_count: int
    feed_forward_length: int
    head_count: int
    head_count_kv: int
    head_dim: int  # set explicitly in Qwen3 configs: 128 even where hidden/heads is 80 or 160
    rope_freq_base: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    rope_scaling: RopeScaling | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen3HParams:
        """Read a Qwen3 config.json; optional keys default as in transformers' Qwen3Config."""
        check_architecture(config)
        missing = [key for key in REQUIRED_KEYS if not isinstance(config.get(key), int)]
        if missing:
            raise UserError(f"config.json lacks {missing[0]}")
        heads = config["num_attention_heads"]
        rope_parameters = config.get("rope_parameters") or {}  # transformers 5 keeps rope here
        return cls(
            context_length=config.get("max_position_embeddings", 32768),
            embedding_length=config["hidden_size"],
            block_count=config["num_hidden_layers"],
            feed_forward_length=config["intermediate_size"],
            head_count=heads,
            head_count_kv=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rope_freq_base=float(config.get("rope_theta", rope_parameters.get("rope_theta", 1e4))),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scaling=_rope_scaling(config.get("rope_scaling") or rope_parameters),
        )


def check_architecture(config: dict[str, Any]) -> None:
    """Refuse config.json files of other model families, naming what they are."""
    architectures = config.get("architectures") or []
    if architectures:
        if not any(name in QWEN3_ARCHITECTURES for name in architectures):
            raise UserError(
                f"config.json: architecture {', '.join(map(str, architectures))} is not Qwen3 "
                f"(expected {' or '.join(QWEN3_ARCHITECTURES)})"
            )
    elif config.get("model_type") != "qwen3":
        raise UserError(f"config.json: model_type {config.get('model_type')!r} is not 'qwen3'")


def _rope_scaling(settings: dict[str, Any]) -> RopeScaling | None:
    rope_type = settings.get("rope_type", settings.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type not in ("linear", "yarn"):
        raise UserError(
            f"config.json: rope scaling type {rope_type!r} is not supported (only linear and yarn)"
        )
    unknown = sorted(
        key for key, value in settings.items()
        if key not in ROPE_SCALING_KEYS and YARN_BUILTINS.get(key) != value
    )
    if unknown:
        raise UserError(f"config.json: rope scaling setting {unknown[0]!r} is not supported")
    if not isinstance(settings.get("factor"), (int, float)):
        raise UserError(f"config.json: {rope_type} rope scaling needs a numeric factor")
    if rope_type == "linear":
        return RopeScaling(RopeScalingType.LINEAR, float(settings["factor"]), None)
    if not isinstance(settings.get("original_max_position_embeddings"), int):
        raise UserError("config.json: yarn rope scaling needs original_max_position_embeddings")
    original_context_length = settings["original_max_position_embeddings"]
    return RopeScaling(RopeScalingType.YARN, float(settings["factor"]), original_context_length)
