"""How token sequences are grouped into llama_decode calls: the batching policy, in one place.

Inputs are sorted by length; short ones share a decode (up to a token budget and a sequence
count), longer ones are decoded alone, and run through a context that grows (by powers of two)
only when a longer input arrives, so short inputs never pay for an 8k-token KV cache.

Inputs that start with the same tokens (queries under one instruction, a reranker's
system + instruction + query) share that prefix: it is decoded once per context and its KV
cells are copied to every input, which then decodes only its own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .context import FA_TILE_ROWS, POOLING_RANK, ContextSettings, PooledContext, common_prefix_length
from .model import LlamaModel
from .precision import EMBEDDING, RERANKER, Numerics, numerics_for

# The policy, chosen by measurement: the numbers are in benchmarks/results.md ("Batching policy").
# Inputs sorted by length; up to PACK_TOKENS tokens packed, up to DEFAULT_MAX_SEQUENCES to a decode;
# longer inputs alone, in pieces of at least MIN_PIECE_TOKENS.
DEFAULT_MAX_SEQUENCES = 16
PACK_TOKENS = 64  # inputs up to this many tokens share decodes, up to this many tokens in all
# Tokens per decode for longer sequences: the piece size. Never smaller than MIN_PIECE_TOKENS.
DEFAULT_BATCH_TOKENS = 512
MIN_PIECE_TOKENS = 512
# Shared prefixes shorter than this are not worth a decode of their own (the default query
# instruction is 19 tokens; a reranker's system prompt alone is 39).
MIN_SHARED_PREFIX_TOKENS = 8
SMALLEST_CONTEXT = 256


def shared_prefix_length(sequences: Sequence[Sequence[int]], hint: Sequence[int] | None = None) -> int:
    """How many leading tokens every sequence (and `hint`, when given) has in common.

    Each sequence keeps at least its last token, the one that is pooled. Tokens, not text:
    byte-level BPE can merge across the end of an instruction ("Query:" + "what" may give
    ":what"), so the shared part is exactly what the sequences would feed anyway. Without a
    hint a single sequence shares nothing.
    """
    if not sequences or (hint is None and len(sequences) < 2):
        return 0
    lowest, highest = min(sequences), max(sequences)  # the set's common prefix is theirs
    n = common_prefix_length(lowest, highest)
    if hint is not None:
        n = min(n, common_prefix_length(hint, lowest))
    return max(0, min(n, min(len(s) for s in sequences) - 1))


def plan_packs(lengths: Sequence[int], pack_tokens: int, max_sequences: int) -> list[list[int]]:
    """Group input indices into decodes: shortest first, each pack within the budgets.

    A sequence longer than `pack_tokens` gets a pack of its own.
    """
    packs: list[list[int]] = []
    current: list[int] = []
    current_tokens = 0
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        length = lengths[index]
        if current and (current_tokens + length > pack_tokens or len(current) == max_sequences):
            packs.append(current)
            current, current_tokens = [], 0
        current.append(index)
        current_tokens += length
    if current:
        packs.append(current)
    return packs


class PooledRunner:
    """Runs many token sequences through llama.cpp and returns their pooled outputs in order."""

    def __init__(self, model: LlamaModel, *, pooling: int, threads: int,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS, max_sequences: int = DEFAULT_MAX_SEQUENCES,
                 pack_tokens: int = PACK_TOKENS, numerics: Numerics | None = None, reuse_prefix: bool = True,
                 op_timer=None):
        self.model = model
        self.pooling = pooling
        self.threads = threads
        self.batch_tokens = batch_tokens
        self.max_sequences = max_sequences
        self.pack_tokens = pack_tokens
        self.fixed_numerics = numerics  # None: precision.py's policy, by model kind, file type and length
        self.reuse_prefix = reuse_prefix
        self.op_timer = op_timer  # an op_profile.OpTimer: time every graph node (benchmarks/profile_documents.py)
        self.n_out = model.n_cls_out if pooling == POOLING_RANK else model.n_embd
        self._contexts: dict[Numerics, PooledContext] = {}
        self._context: PooledContext | None = None

    @property
    def context(self) -> PooledContext | None:
        """The context the last decode used (None before the first run)."""
        return self._context

    def numerics_for(self, n_tokens: int) -> Numerics:
        """The KV cache type and flash attention for an input of `n_tokens` (prefix included)."""
        if self.fixed_numerics is not None:
            return self.fixed_numerics
        kind = RERANKER if self.pooling == POOLING_RANK else EMBEDDING
        return numerics_for(self.model.file_type, kind=kind, n_tokens=n_tokens)

    def run(self, sequences: Sequence[list[int]], *, shared_prefix: Sequence[int] | None = None,
            progress=None) -> np.ndarray:
        """Pooled output for each sequence; `progress` (a tqdm bar or None) advances per input.

        `shared_prefix` names tokens the inputs are expected to start with (the tokenized
        instruction part of a prompt); it lets even a single input reuse a prefix held from an
        earlier call. Whatever the hint, only tokens every input really starts with are shared.
        """
        n_shared = shared_prefix_length(sequences, shared_prefix) if self.reuse_prefix else 0
        if n_shared < MIN_SHARED_PREFIX_TOKENS:
            n_shared = 0
        prefix = list(sequences[0][:n_shared]) if n_shared else []
        own = [s[n_shared:] for s in sequences]
        lengths = [len(s) for s in own]
        out = np.empty((len(sequences), self.n_out), dtype=np.float32)
        for pack in plan_packs(lengths, self.pack_tokens, self.max_sequences):
            # With a prefix, each input of a short pack may re-decode up to FA_TILE_ROWS prefix tokens.
            extra = (len(pack) - 1) * FA_TILE_ROWS if n_shared else 0
            numerics = self.numerics_for(n_shared + max(lengths[i] for i in pack))
            context = self._context_for(n_shared + sum(lengths[i] for i in pack) + extra, numerics)
            context.hold_prefix(prefix)
            out[pack] = context.pooled([own[i] for i in pack])
            if progress is not None:
                progress.update(len(pack))
        return out

    def _context_for(self, n_tokens: int, numerics: Numerics) -> PooledContext:
        """The context of these numerics if it holds `n_tokens`, otherwise a larger one."""
        context = self._contexts.get(numerics)
        if context is None or context.settings.n_ctx < n_tokens:
            n_ctx = SMALLEST_CONTEXT
            n_batch = max(self.batch_tokens, self.pack_tokens, MIN_PIECE_TOKENS)
            while n_ctx < max(n_tokens, n_batch):
                n_ctx *= 2
            if context is not None:
                context.close()
            self._contexts[numerics] = context = PooledContext(self.model, ContextSettings(
                pooling=self.pooling,
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_seq_max=self.max_sequences,
                threads=self.threads,
                flash_attn=numerics.flash_attn,
                kv_type=numerics.kv_type,
            ), op_timer=self.op_timer)
        self._context = context
        return context

    def close(self) -> None:
        for context in self._contexts.values():
            context.close()
        self._contexts.clear()
        self._context = None
