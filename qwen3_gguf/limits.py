"""Input limits that every front end (Python, CLI, server) checks the same way."""

from __future__ import annotations

from .errors import UserError

MAX_INPUT_TOKENS = 8192  # an input longer than this is truncated (keeping its EOS) or refused
MIN_MRL_DIM = 32         # Matryoshka: the smallest leading slice of an embedding Qwen3 was trained for


class TruncationWarning(UserWarning):
    """Some inputs were longer than the token limit and were cut."""


def check_dim(dim: int | None, n_embd: int) -> None:
    """Refuse a Matryoshka dimension outside MIN_MRL_DIM…n_embd."""
    if dim is not None and not MIN_MRL_DIM <= dim <= n_embd:
        raise UserError(
            f"--dim {dim} is outside {MIN_MRL_DIM}…{n_embd} (this model's embeddings have {n_embd} dimensions)"
        )
