"""The one place that talks to llama.cpp, through llama-cpp-python's low-level ctypes API.

Why not `Llama.embed()`: it tokenizes with special tokens off (the reranker template breaks),
reads `n_embd` floats where RANK pooling returns `n_cls_out`, truncates by slicing off the EOS
that last-token pooling reads, and caps inputs at 512 tokens by default. So we drive
`llama_decode` ourselves and read one pooled vector per sequence.
"""

from __future__ import annotations

import ctypes
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama
import numpy as np

from .errors import UserError

POOLING_LAST = llama.LLAMA_POOLING_TYPE_LAST
POOLING_RANK = llama.LLAMA_POOLING_TYPE_RANK


# --- logging -------------------------------------------------------------------------------

@llama.llama_log_callback
def _discard_log(level, text, user_data):  # noqa: ARG001 - ctypes callback signature
    return None


@llama.llama_log_callback
def _log_to_stderr(level, text, user_data):  # noqa: ARG001 - ctypes callback signature
    sys.stderr.write(text.decode("utf-8", errors="replace"))


_backend_initialised = False


def init_backend(*, verbose: bool = False) -> None:
    """Initialise llama.cpp once per process; its log goes to stderr only when verbose."""
    global _backend_initialised
    llama.llama_log_set(_log_to_stderr if verbose else _discard_log, ctypes.c_void_p())
    if not _backend_initialised:
        llama.llama_backend_init()
        _backend_initialised = True


def default_threads() -> int:
    """All cores this process may run on: llama.cpp's batch decoding scales with them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def gpu_layers_for(device: str) -> int:
    """Translate the user-facing device name into llama.cpp's n_gpu_layers."""
    if device not in ("auto", "cpu", "gpu"):
        raise UserError(f"unknown device {device!r}: choose auto, cpu or gpu")
    has_gpu = bool(llama.llama_supports_gpu_offload())
    if device == "gpu" and not has_gpu:
        raise UserError(
            "this llama-cpp-python build has no GPU backend; reinstall it with "
            "CMAKE_ARGS=\"-DGGML_CUDA=on\" (or -DGGML_METAL=on) or use --device cpu"
        )
    return -1 if device != "cpu" and has_gpu else 0


# --- model -----------------------------------------------------------------------------------

class LlamaModel:
    """A loaded (memory-mapped) GGUF model and its tokenizer."""

    def __init__(self, path: Path, *, gpu_layers: int = 0):
        params = llama.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self._model = llama.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise UserError(f"llama.cpp could not load {path} (run with --verbose to see why)")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.n_embd = llama.llama_model_n_embd(self._model)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self._model)
        self.n_cls_out = llama.llama_model_n_cls_out(self._model)
        self._token_buffer = (llama.llama_token * 4096)()

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Token ids of `text`; `special=True` parses control tokens such as <|im_start|>.

        User text is tokenized with `special=False`, so a typed "<|im_start|>" stays plain text.
        The text is NFC-normalized first, as the Qwen tokenizer.json specifies and llama.cpp
        does not (a decomposed "é" would otherwise give different tokens than transformers).
        No BOS/EOS is added here: callers add what their prompt format needs.
        """
        data = unicodedata.normalize("NFC", text).encode("utf-8")
        while True:
            n = llama.llama_tokenize(
                self._vocab, data, len(data), self._token_buffer, len(self._token_buffer), False, special
            )
            if n >= 0:
                return list(self._token_buffer[:n])
            self._token_buffer = (llama.llama_token * (-n))()

    def special_token(self, text: str) -> int:
        """The id of a single control token given by its text, e.g. "<|endoftext|>"."""
        ids = self.tokenize(text, special=True)
        if len(ids) != 1:
            raise UserError(f"the model's vocabulary has no {text} token")
        return ids[0]

    def close(self) -> None:
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        self.close()


# --- context ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContextSettings:
    pooling: int          # POOLING_LAST (embeddings) or POOLING_RANK (reranker scores)
    n_ctx: int            # KV cells shared by all sequences of one decode (unified KV cache)
    n_batch: int          # tokens per llama_decode call
    n_seq_max: int        # sequences per llama_decode call
    threads: int
    flash_attn: bool = True


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


class PooledContext:
    """A llama.cpp context that returns one pooled vector per sequence.

    With LAST pooling the vector is the final hidden state of the sequence's last token
    (n_embd floats); with RANK pooling it is the classifier output (n_cls_out floats).
    """

    def __init__(self, model: LlamaModel, settings: ContextSettings):
        params = llama.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = settings.n_batch
        params.n_ubatch = settings.n_batch
        params.n_seq_max = settings.n_seq_max
        params.n_threads = settings.threads
        params.n_threads_batch = settings.threads
        params.embeddings = True
        params.pooling_type = settings.pooling
        params.kv_unified = True
        params.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings.flash_attn else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
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

    def pooled(self, sequences: list[list[int]]) -> np.ndarray:
        """Decode `sequences` together and return their pooled outputs, one row each.

        All sequences must fit in one batch, except a single sequence, which may be longer
        than n_batch (up to n_ctx): it is decoded in n_batch-sized pieces that build up the
        KV cache, and the pooled value of the last piece is the one for the whole sequence.
        """
        total = sum(len(s) for s in sequences)
        if len(sequences) > self.settings.n_seq_max or total > self.settings.n_ctx:
            raise ValueError("batch exceeds the context it was planned for")
        if len(sequences) > 1 and total > self.settings.n_batch:
            raise ValueError("several sequences must fit in one decode")
        llama.llama_memory_clear(self._memory, True)
        if len(sequences) == 1:
            tokens = sequences[0]
            for start in range(0, len(tokens), self.settings.n_batch):
                piece = tokens[start:start + self.settings.n_batch]
                self._decode([(0, piece, start)])
        else:
            self._decode([(seq, tokens, 0) for seq, tokens in enumerate(sequences)])
        out = np.empty((len(sequences), self.n_out), dtype=np.float32)
        for seq in range(len(sequences)):
            ptr = llama.llama_get_embeddings_seq(self._ctx, seq)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no pooled output for sequence {seq}")
            out[seq] = np.ctypeslib.as_array(ptr, shape=(self.n_out,))
        return out

    def _decode(self, pieces: list[tuple[int, list[int], int]]) -> None:
        """One llama_decode over (seq_id, tokens, first position) pieces."""
        batch = self._batch
        n = 0
        for seq, tokens, first_pos in pieces:
            end = n + len(tokens)
            batch.tokens[n:end] = tokens
            batch.positions[n:end] = np.arange(first_pos, first_pos + len(tokens), dtype=np.int32)
            batch.seq_ids[n:end] = seq
            n = end
        batch.struct.n_tokens = n
        status = llama.llama_decode(self._ctx, batch.struct)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")

    def close(self) -> None:
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None

    def __del__(self):
        self.close()
