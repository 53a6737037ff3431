"""What one request, and the server as a whole, will take (no web framework needed to read it)."""

from __future__ import annotations

from dataclasses import dataclass, fields

DRAIN_SECONDS = 30  # at shutdown, how long requests in flight may still run


@dataclass(frozen=True)
class Limits:
    max_batch_tokens: int = 8192       # tokens of waiting requests handed to the engine per round
    max_queue_tokens: int = 131072     # tokens admitted and not yet answered; past it → 429
    max_request_bytes: int = 16 << 20  # request body size; past it → 413
    max_inputs: int = 2048             # inputs per request (OpenAI's limit); past it → 413

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{f.name} must be a positive integer, got {value!r}")
