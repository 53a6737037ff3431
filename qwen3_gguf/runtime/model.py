"""A loaded GGUF model: tokenizer, token pieces, the rerank head's rows."""

from __future__ import annotations

import ctypes
import sys
import threading
import unicodedata
from pathlib import Path

import llama_cpp as llama
import numpy as np

from ..errors import UserError
from ..tensor_names import CLASSIFIER, OTHER_CLASSIFIER_TENSORS
from .amx import built_with_amx, repack_overrides


class LlamaModel:
    """A loaded (memory-mapped) GGUF model and its tokenizer."""

    def __init__(self, path: Path, *, gpu_layers: int = 0):
        params = llama.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        params.use_extra_bufts = not built_with_amx()  # its AMX path dies with SIGILL: see amx.py
        overrides = repack_overrides(path) if gpu_layers == 0 else None  # ... and CPU_REPACK comes back
        if overrides is not None:
            params.tensor_buft_overrides = overrides.pointer
        self._model = llama.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise UserError(f"llama.cpp could not load {path} (run with --verbose to see why)")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.n_embd = llama.llama_model_n_embd(self._model)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self._model)
        self.n_cls_out = llama.llama_model_n_cls_out(self._model)
        self.n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self._token_buffer = (llama.llama_token * 4096)()
        self._token_buffer_lock = threading.Lock()  # tokenize may be called from several threads (the server)
        self._pieces: dict[int, bytes] = {}
        self.path = Path(path)
        self._head: np.ndarray | None | bool = False  # False: not read yet
        self.file_type = self._file_type()

    def _file_type(self) -> int | None:
        """The file's llama_ftype (general.file_type: F32, F16, Q8_0, ...), None when it does not say."""
        buffer = ctypes.create_string_buffer(32)
        n = llama.llama_model_meta_val_str(self._model, b"general.file_type", buffer, len(buffer))
        try:
            return int(buffer.value) if n > 0 else None
        except ValueError:
            return None

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Token ids of `text`; `special=True` parses control tokens such as <|im_start|>.

        User text is tokenized with `special=False`, so a typed "<|im_start|>" stays plain text.
        The text is NFC-normalized first, as the Qwen tokenizer.json specifies and llama.cpp
        does not (a decomposed "é" would otherwise give different tokens than transformers).
        No BOS/EOS is added here: callers add what their prompt format needs.
        """
        data = unicodedata.normalize("NFC", text).encode("utf-8")
        with self._token_buffer_lock:
            while True:
                n = llama.llama_tokenize(
                    self._vocab, data, len(data), self._token_buffer, len(self._token_buffer), False, special
                )
                if n >= 0:
                    return list(self._token_buffer[:n])
                self._token_buffer = (llama.llama_token * (-n))()

    def token_bytes(self, token: int) -> bytes:
        """The bytes of text one token stands for (byte-level BPE: maybe part of a character)."""
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            n = llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
            if n < 0:
                buffer = ctypes.create_string_buffer(-n)
                n = llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
            piece = self._pieces[token] = buffer.raw[:n]
        return piece

    def classifier_head(self) -> np.ndarray | None:
        """The rerank head as float32 rows (n_cls_out × n_embd), or None when the file's head is
        not the single projection that Qwen3 rerankers use (then llama.cpp pools, see PooledContext)."""
        if self._head is False:
            from ..gguf_file import read_tensors

            found = read_tensors(self.path, (CLASSIFIER, *OTHER_CLASSIFIER_TENSORS))
            self._head = found[CLASSIFIER] if set(found) == {CLASSIFIER} else None
        return self._head

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

    def __del__(self, _exiting=sys.is_finalizing):
        # At exit the process frees it, and llama_cpp's functions may already be gone (objects kept
        # alive to the end, as the framework classes keep theirs).
        if not _exiting():
            self.close()
