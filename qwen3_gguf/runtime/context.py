"""A llama.cpp context that decodes inputs and returns one pooled vector per sequence.

Why not `Llama.embed()`: it tokenizes with special tokens off (the reranker template breaks),
reads `n_embd` floats where RANK pooling returns `n_cls_out`, truncates by slicing off the EOS
that last-token pooling reads, and caps inputs at 512 tokens by default. So we drive
`llama_decode` ourselves and read one pooled vector per sequence.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp as llama
import numpy as np

from ..errors import UserError
from .backend import POOLING_LAST, POOLING_RANK
from .ggml import GGML_TYPE_F32, GGMLTensor, load_ggml
from .model import LlamaModel


@dataclass(frozen=True)
class ContextSettings:
    pooling: int          # POOLING_LAST (embeddings) or POOLING_RANK (reranker scores)
    n_ctx: int            # KV cells shared by all sequences of one decode (unified KV cache)
    n_batch: int          # tokens per llama_decode call
    n_seq_max: int        # sequences per llama_decode call (a held shared prefix adds one more)
    threads: int
    flash_attn: bool = False
    kv_type: int = GGML_TYPE_F32  # type_k and type_v: see precision.py


class _Batch:
    """A llama_batch whose arrays are numpy buffers, so it is filled with slices, not loops."""

    def __init__(self, n_tokens_max: int):
        self.tokens = np.zeros(n_tokens_max, dtype=np.int32)
        self.positions = np.zeros(n_tokens_max, dtype=np.int32)
        self.n_seq_ids = np.ones(n_tokens_max, dtype=np.int32)
        self.seq_ids = np.zeros(n_tokens_max, dtype=np.int32)
        self.outputs = np.ones(n_tokens_max, dtype=np.int8)
        # seq_id[i] must point at token i's list of sequence ids: here, one int32 each.
        self._seq_id_ptrs = (self.seq_ids.ctypes.data + 4 * np.arange(n_tokens_max)).astype(np.uintp)
        self.struct = llama.llama_batch()
        self.struct.token = self.tokens.ctypes.data_as(ctypes.POINTER(llama.llama_token))
        self.struct.embd = None
        self.struct.pos = self.positions.ctypes.data_as(ctypes.POINTER(llama.llama_pos))
        self.struct.n_seq_id = self.n_seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = ctypes.cast(
            self._seq_id_ptrs.ctypes.data, ctypes.POINTER(ctypes.POINTER(llama.llama_seq_id))
        )
        self.struct.logits = self.outputs.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))


PREFIX_SEQ = 0  # the sequence that holds a shared prefix's KV cells; inputs are sequences 1, 2, ...
FINAL_HIDDEN = b"result_norm"  # llama.cpp's name for the normalized last-layer hidden states
# ggml-cpu's flash attention runs its tiled F32 kernel on decodes of at least FA_TILE_ROWS tokens;
# shorter decodes accumulate in F16, with an error that grows with the cells attended to. So a decode that
# would attend to more than FA_SHORT_SPAN cells gets at least FA_TILE_ROWS tokens. Numbers: benchmarks/results.md
# ("Flash attention on short decodes").
FA_TILE_ROWS = 64
FA_SHORT_SPAN = 256


def split_pieces(n_tokens: int, n_batch: int, min_rows: int = 1) -> list[tuple[int, int]]:
    """[start, end) pieces of at most n_batch tokens; a last piece after others gets min_rows."""
    bounds = [*range(0, n_tokens, n_batch), n_tokens]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_rows:
        bounds[-2] = bounds[-1] - min_rows
    return list(zip(bounds[:-1], bounds[1:]))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    return int(np.argmin(np.asarray(a[:n]) == np.asarray(b[:n])))


class PooledContext:
    """A llama.cpp context that returns one pooled vector per sequence.

    With LAST pooling the vector is the final hidden state of the sequence's last token
    (n_embd floats); with RANK pooling it is the classifier output (n_cls_out floats).

    Shared prefix: `hold_prefix(tokens)` decodes tokens once into sequence 0 and keeps their
    KV cells; `pooled()` then copies those cells to each input sequence (llama_memory_seq_cp
    only tags the cells with more sequence ids in the unified cache) and decodes only the
    input's own tokens, at positions after the prefix; the pooled row is the input's last token.
    (Where llama.cpp pools, it takes the token with the highest position of each sequence in the
    ubatch: the suffix's last token too.)

    Pooling here, not in llama.cpp: an embedding context makes every token an output, and the
    Qwen3 graph then runs the lm_head (151,669 × n_embd) on every token before pooling — about
    a third of the model's arithmetic, thrown away — and copies those logits out (606 KiB per
    token: 296 MiB of memory for a 512-token decode). So the context is not an embedding
    context and only the pooled rows are outputs; a `_FinalHiddenStates` eval callback copies
    those rows of the final hidden states and stops the graph there, before the lm_head
    (measured on the 0.6B shape, CPU: 1.4× tokens/s, and process RSS 1,285 → 981 MB after a
    2,048-token input at Q8_0). The rerank head is then applied here: softmax(head · h), as
    llama.cpp does for Qwen3. With another eval callback (the imatrix observer) llama.cpp pools.
    """

    def __init__(self, model: LlamaModel, settings: ContextSettings, *, eval_callback=None, op_timer=None):
        params = llama.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = settings.n_batch
        params.n_ubatch = settings.n_batch
        params.n_seq_max = settings.n_seq_max + 1  # sequence 0 holds a shared prefix
        params.n_threads = settings.threads
        params.n_threads_batch = settings.threads
        params.kv_unified = True
        params.type_k = params.type_v = settings.kv_type
        params.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._head = model.classifier_head() if settings.pooling == POOLING_RANK else None
        self._tap = None
        if eval_callback is None and (settings.pooling == POOLING_LAST or self._head is not None):
            self._tap = _FinalHiddenStates(model.n_embd)
            eval_callback = self._tap.callback
        if op_timer is not None:  # times every node, then lets the tap (if any) decide as before
            eval_callback = op_timer.callback_around(self._tap.observe if self._tap is not None else None)
        # Where llama.cpp pools, it needs an embedding context (every token an output). Where the
        # tap pools, only the pooled rows are outputs: see _FinalHiddenStates.
        params.embeddings = self._tap is None
        params.pooling_type = settings.pooling
        if eval_callback is not None:  # sees every graph node: MatMulInputObserver, _FinalHiddenStates, OpTimer
            params.cb_eval = eval_callback
        self._eval_callback = eval_callback  # ctypes callbacks must outlive the context
        self._ctx = llama.llama_init_from_model(model._model, params)
        if not self._ctx:
            raise UserError(
                f"llama.cpp could not create a context of {settings.n_ctx} tokens "
                "(out of memory? try a smaller --max-tokens)"
            )
        self.model = model
        self.settings = settings
        self.n_out = model.n_cls_out if settings.pooling == POOLING_RANK else model.n_embd
        self._memory = llama.llama_get_memory(self._ctx)
        self._batch = _Batch(settings.n_batch)
        self._min_rows = FA_TILE_ROWS if settings.flash_attn else 1
        self.prefix: list[int] = []  # tokens whose KV sequence 0 holds

    @property
    def pools_here(self) -> bool:
        """True when this context reads the pooled rows itself (its own eval callback), not llama.cpp."""
        return self._tap is not None

    def hold_prefix(self, tokens: Sequence[int]) -> None:
        """Keep the KV of `tokens` in sequence 0; pooled() inputs then continue after them.

        What is already held is reused as far as it agrees with `tokens`; only the rest is
        decoded. An empty `tokens` drops the prefix.
        """
        tokens = list(tokens)
        keep = common_prefix_length(self.prefix, tokens)
        if keep == len(self.prefix) == len(tokens):
            return
        if len(tokens) > self.settings.n_ctx:
            raise ValueError("the shared prefix does not fit in the context")
        if keep < len(tokens) and len(tokens) > FA_SHORT_SPAN:  # see FA_TILE_ROWS
            keep = max(0, min(keep, len(tokens) - self._min_rows))
        if keep == 0:
            self._forget_all_cells()
        else:
            llama.llama_memory_seq_rm(self._memory, PREFIX_SEQ, keep, -1)
        self.prefix = tokens[:keep]
        for start, end in split_pieces(len(tokens) - keep, self.settings.n_batch, self._min_rows):
            self._decode([(PREFIX_SEQ, tokens[keep + start:keep + end], keep + start)], keep_rows=[])
            self.prefix = tokens[:keep + end]

    def pooled(self, sequences: list[list[int]]) -> np.ndarray:
        """Decode `sequences` together and return their pooled outputs, one row each.

        All sequences must fit in one batch, except a single sequence, which may be longer
        than n_batch (up to n_ctx): it is decoded in n_batch-sized pieces that build up the
        KV cache, and the pooled value of the last piece is the one for the whole sequence.
        With a held prefix, each sequence is the continuation of the prefix (its tokens only).
        """
        n_prefix = len(self.prefix)
        if len(sequences) > self.settings.n_seq_max:
            raise ValueError("batch exceeds the context it was planned for")
        if any(not s for s in sequences):
            raise ValueError("every sequence needs at least one token of its own to pool")
        # With a prefix, a short decode re-decodes the prefix's last tokens (see FA_TILE_ROWS).
        back = self.recomputed_prefix_tokens(n_prefix, [len(s) for s in sequences])
        start_pos = n_prefix - back
        if back:
            sequences = [self.prefix[start_pos:] + list(s) for s in sequences]
        total = start_pos + sum(len(s) for s in sequences)
        if total > self.settings.n_ctx:
            raise ValueError("batch exceeds the context it was planned for")
        if len(sequences) > 1 and total - start_pos > self.settings.n_batch:
            raise ValueError("several sequences must fit in one decode")
        seq_ids = range(PREFIX_SEQ + 1, PREFIX_SEQ + 1 + len(sequences))
        if not n_prefix:
            self._forget_all_cells()
        try:
            for seq in seq_ids:
                if start_pos:  # the prefix cells before start_pos, shared
                    llama.llama_memory_seq_cp(self._memory, PREFIX_SEQ, seq, 0, start_pos)
            if len(sequences) == 1:
                tokens = sequences[0]
                for start, end in split_pieces(len(tokens), self.settings.n_batch, self._min_rows):
                    last = end == len(tokens)
                    self._decode([(seq_ids[0], tokens[start:end], start_pos + start)],
                                 keep_rows=[end - start - 1] if last else [])
            else:
                ends = np.cumsum([len(s) for s in sequences])
                self._decode([(seq, tokens, start_pos) for seq, tokens in zip(seq_ids, sequences)],
                             keep_rows=list(ends - 1))
            out = self._outputs(seq_ids)
        finally:
            if n_prefix:  # free the inputs' cells; the prefix's stay with sequence 0
                for seq in seq_ids:
                    llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
        return out

    def _forget_all_cells(self) -> None:
        """Mark every KV cell free. Their bytes stay: a free cell is masked out like another
        sequence's cell in a pack, and zeroing the whole cache before every input cost 7 ms at
        2,048 cells and 25 ms at 8,192 (0.6B shape), 2–6% of a 30-token input's 0.4 s."""
        llama.llama_memory_clear(self._memory, False)

    def recomputed_prefix_tokens(self, n_prefix: int, lengths: Sequence[int]) -> int:
        """How many of the held prefix's last tokens each input decodes again, so that a first
        decode after a long prefix has FA_TILE_ROWS tokens (none without flash attention)."""
        first_decode = min(sum(lengths), self.settings.n_batch)
        if not n_prefix or first_decode >= self._min_rows or n_prefix + first_decode <= FA_SHORT_SPAN:
            return 0
        return min(n_prefix, -(-(self._min_rows - first_decode) // len(lengths)))

    def _outputs(self, seq_ids: range) -> np.ndarray:
        """The pooled output of each sequence of the last decode."""
        if self._tap is not None:
            hidden = self._tap.rows
            if self._head is None:
                return hidden
            logits = hidden @ self._head.T
            logits -= logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            return (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(np.float32)
        out = np.empty((len(seq_ids), self.n_out), dtype=np.float32)
        for row, seq in enumerate(seq_ids):
            ptr = llama.llama_get_embeddings_seq(self._ctx, seq)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no pooled output for sequence {seq}")
            out[row] = np.ctypeslib.as_array(ptr, shape=(self.n_out,))
        return out

    def _decode(self, pieces: list[tuple[int, list[int], int]], *, keep_rows: list[int]) -> None:
        """One llama_decode over (seq_id, tokens, first position) pieces; `keep_rows` are the
        batch rows whose final hidden states the pooling tap copies."""
        batch = self._batch
        n = 0
        for seq, tokens, first_pos in pieces:
            end = n + len(tokens)
            batch.tokens[n:end] = tokens
            batch.positions[n:end] = np.arange(first_pos, first_pos + len(tokens), dtype=np.int32)
            batch.seq_ids[n:end] = seq
            n = end
        batch.struct.n_tokens = n
        if self._tap is not None:  # the kept rows are the only outputs, in batch order
            batch.outputs[:n] = 0
            batch.outputs[keep_rows] = 1
            self._tap.expect(len(keep_rows))
        status = llama.llama_decode(self._ctx, batch.struct)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        if self._tap is not None:
            self._tap.check()

    def close(self) -> None:
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None

    def __del__(self, _exiting=sys.is_finalizing):
        # At exit the process frees it, and llama_cpp's functions may already be gone (objects kept
        # alive to the end, as the framework classes keep theirs).
        if not _exiting():
            self.close()


class _FinalHiddenStates:
    """An eval callback that copies some rows of the final hidden states (`result_norm`) and
    then stops the graph, so that llama.cpp skips the lm_head that follows them."""

    def __init__(self, n_embd: int):
        self._ggml = load_ggml()
        self.n_embd = n_embd
        self.rows = np.empty((0, n_embd), dtype=np.float32)
        self._n_outputs = 0
        self._seen = False
        self._pending: BaseException | None = None
        self.callback = llama.ggml_backend_sched_eval_callback(self.observe)

    def expect(self, n_outputs: int) -> None:
        """The next decode has `n_outputs` output rows; the final hidden states hold just those."""
        self._n_outputs, self._seen = n_outputs, False
        self.rows = np.empty((n_outputs, self.n_embd), dtype=np.float32)

    def observe(self, node_address, ask, user_data) -> bool:  # noqa: ARG002 - ctypes signature
        try:
            node = GGMLTensor.from_address(node_address)
            if node.name != FINAL_HIDDEN:
                return False if ask else True
            if ask:
                return True
            if list(node.ne[:2]) != [self.n_embd, self._n_outputs] or node.type != GGML_TYPE_F32:
                raise RuntimeError(f"unexpected {FINAL_HIDDEN.decode()} tensor {list(node.ne)} type {node.type}")
            tensor_p = ctypes.cast(ctypes.c_void_p(node_address), ctypes.POINTER(GGMLTensor))
            for i in range(self._n_outputs):
                self._ggml.ggml_backend_tensor_get(tensor_p, self.rows[i].ctypes.data, i * node.nb[1], 4 * self.n_embd)
            self._seen = True
        except BaseException as exc:  # noqa: BLE001 - re-raised by check()
            self._pending = self._pending or exc
        return False  # stop: nothing after the final hidden states is needed

    def check(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending
        if not self._seen:
            raise RuntimeError(f"llama.cpp's graph had no {FINAL_HIDDEN.decode()} node to pool from")
