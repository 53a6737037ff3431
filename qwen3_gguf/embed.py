"""Text embeddings from a Qwen3-Embedding GGUF: last-token pooling, L2-normalized, MRL dims."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import runtime
from .catalog import resolve_model
from .errors import UserError
from .gguf_file import read_model_file, require_kind
from .limits import MAX_INPUT_TOKENS, TruncationWarning, check_dim
from .progress import progress_bar
from .prompts import DEFAULT_INSTRUCTION, query_text
from .runtime.batching import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_SEQUENCES, PooledRunner

EOS_TOKEN = "<|endoftext|>"
PROMPT_NAMES = ("query", "document")


class Embedder:
    """Embeds texts with a Qwen3-Embedding GGUF on llama.cpp.

    >>> embedder = Embedder("qwen3-embedding-0.6b-q8_0.gguf")
    >>> queries = embedder.encode(["what is GGUF?"], prompt_name="query")
    >>> docs = embedder.encode(["GGUF is the file format of llama.cpp."])
    >>> embedder.similarity(queries, docs)
    """

    def __init__(self, model: str | Path, *, device: str = "auto", threads: int | None = None,
                 max_tokens: int = MAX_INPUT_TOKENS, reuse_prefix: bool = True, verbose: bool = False):
        self.model_file = read_model_file(resolve_model(model, "embedding"))
        require_kind(self.model_file, "embedding")
        runtime.init_backend(verbose=verbose)
        self._llama = runtime.LlamaModel(self.model_file.path, gpu_layers=runtime.gpu_layers_for(device))
        # Append <|endoftext|> and pool the last token ourselves: older GGUFs lack the
        # add_eos/pooling metadata, and the result must not depend on it.
        self._eos = self._llama.special_token(EOS_TOKEN)
        self.dimension = self._llama.n_embd
        if max_tokens < 2:
            raise UserError(f"max_tokens must be at least 2, got {max_tokens}")
        self.max_tokens = min(max_tokens, self._llama.n_ctx_train)
        self._threads = threads or runtime.default_threads()
        self._reuse_prefix = reuse_prefix  # False: every query decodes its instruction again
        self._runner: PooledRunner | None = None

    @property
    def loaded_model(self) -> runtime.LlamaModel:
        """The llama.cpp model this embedder runs, for callers that run contexts of their own on it."""
        return self._llama

    @property
    def runner(self) -> PooledRunner | None:
        """The batching runner of the last encode (None before the first)."""
        return self._runner

    def tokenize(self, text: str) -> tuple[list[int], bool]:
        """The ids the model sees for `text` (already prompt-formatted) and whether it was cut.

        Text is tokenized with control tokens off, then <|endoftext|> is appended; a text over
        the limit keeps its first max_tokens-1 tokens and the EOS.
        """
        ids = self._llama.tokenize(text, special=False)
        truncated = len(ids) + 1 > self.max_tokens
        if truncated:
            ids = ids[: self.max_tokens - 1]
        ids.append(self._eos)
        return ids, truncated

    def token_pieces(self, text: str) -> list[bytes]:
        """The bytes of each token of `text` (NFC-normalized; no EOS, no truncation).

        Joined they give the UTF-8 of the normalized text: the file chunker maps token
        boundaries back to character offsets with them.
        """
        return [self._llama.token_bytes(token) for token in self._llama.tokenize(text, special=False)]

    def encode(self, texts: str | Sequence[str], *, prompt_name: str | None = None,
               instruction: str | None = None, dim: int | None = None, normalize: bool = True,
               truncate: bool = True, batch_tokens: int = DEFAULT_BATCH_TOKENS,
               show_progress: bool = False) -> np.ndarray:
        """Embed one text (→ 1-D array) or a list of texts (→ 2-D float32 array, one row each).

        prompt_name="query" wraps texts in the default retrieval instruction; instruction=...
        gives your own task description. Documents take neither. dim keeps the first `dim`
        Matryoshka dimensions (32…n_embd) and renormalizes.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        instruction = self._instruction(prompt_name, instruction)
        self._check_dim(dim)
        for i, text in enumerate(batch):
            if not isinstance(text, str):
                raise UserError(f"text #{i} is a {type(text).__name__}, not a string")
            if not text:
                raise UserError(f"text #{i} is empty; there is nothing to embed")

        prompts = batch if instruction is None else [query_text(t, instruction) for t in batch]
        sequences, n_truncated = [], 0
        for i, prompt in enumerate(prompts):
            ids, truncated = self.tokenize(prompt)
            if truncated and not truncate:
                raise UserError(f"text #{i} is longer than {self.max_tokens} tokens (truncation is off)")
            n_truncated += truncated
            sequences.append(ids)
        if n_truncated:
            warnings.warn(
                f"{n_truncated} of {len(batch)} texts were longer than {self.max_tokens} tokens "
                "and were truncated (the end was cut, the EOS kept)",
                TruncationWarning, stacklevel=2,
            )

        with progress_bar(total=len(sequences), enabled=show_progress, unit="text") as bar:
            vectors = self._runner_for(batch_tokens).run(
                sequences, shared_prefix=self.instruction_prefix(instruction), progress=bar)
        if dim is not None:
            vectors = vectors[:, :dim]
        if normalize:
            vectors = _l2_normalize(vectors)
        return vectors[0] if single else vectors

    @property
    def eos_token_id(self) -> int:
        """The id of <|endoftext|>, which ends every input (its hidden state is the embedding)."""
        return self._eos

    @property
    def vocabulary_size(self) -> int:
        return self._llama.n_vocab

    def encode_tokens(self, token_ids: Sequence[Sequence[int]], *, dim: int | None = None, normalize: bool = True,
                      truncate: bool = True, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> np.ndarray:
        """Embed inputs given as token ids (→ 2-D float32 array, one row each).

        Each input is what `tokenize` gives for a (prompt-formatted) text, with or without its
        final <|endoftext|> (appended when missing), so the row equals `encode` of that text.
        Ids outside the vocabulary are refused; longer inputs keep their first max_tokens-1
        ids and the EOS, or are refused with truncate=False.
        """
        self._check_dim(dim)
        sequences, n_truncated = [], 0
        for i, ids in enumerate(token_ids):
            ids = [int(token) for token in ids]
            outside = next((t for t in ids if not 0 <= t < self.vocabulary_size), None)
            if outside is not None:
                raise UserError(f"token list #{i} holds id {outside}, "
                                f"outside the vocabulary (0…{self.vocabulary_size - 1})")
            if ids and ids[-1] == self._eos:
                ids.pop()
            if not ids:
                raise UserError(f"token list #{i} is empty; there is nothing to embed")
            if len(ids) + 1 > self.max_tokens:
                if not truncate:
                    raise UserError(f"token list #{i} is longer than {self.max_tokens} tokens (truncation is off)")
                ids, n_truncated = ids[: self.max_tokens - 1], n_truncated + 1
            sequences.append([*ids, self._eos])
        if n_truncated:
            warnings.warn(f"{n_truncated} of {len(sequences)} token lists were longer than {self.max_tokens} tokens "
                          "and were truncated (the end was cut, the EOS kept)", TruncationWarning, stacklevel=2)
        vectors = self._runner_for(batch_tokens).run(sequences)
        if dim is not None:
            vectors = vectors[:, :dim]
        return _l2_normalize(vectors) if normalize else vectors

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity between every row of `a` and every row of `b`."""
        a = _l2_normalize(np.atleast_2d(np.asarray(a, dtype=np.float32)))
        b = _l2_normalize(np.atleast_2d(np.asarray(b, dtype=np.float32)))
        return a @ b.T

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        self._llama.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _runner_for(self, batch_tokens: int) -> PooledRunner:
        """The runner (and its llama.cpp context) for this token budget, kept between calls."""
        if batch_tokens < 1:
            raise UserError(f"batch_tokens must be positive, got {batch_tokens}")
        if self._runner is None or self._runner.batch_tokens != batch_tokens:
            if self._runner is not None:
                self._runner.close()
            self._runner = PooledRunner(
                self._llama, pooling=runtime.POOLING_LAST, threads=self._threads,
                batch_tokens=batch_tokens, max_sequences=DEFAULT_MAX_SEQUENCES,
                reuse_prefix=self._reuse_prefix,
            )
        return self._runner

    def instruction_prefix(self, instruction: str | None) -> list[int] | None:
        """The tokens every query under `instruction` starts with, give or take the last one
        (BPE may merge "Query:" with the query's first characters); None for documents."""
        if instruction is None:
            return None
        return self._llama.tokenize(query_text("", instruction), special=False)

    @staticmethod
    def _instruction(prompt_name: str | None, instruction: str | None) -> str | None:
        if prompt_name is not None and prompt_name not in PROMPT_NAMES:
            raise UserError(f"unknown prompt_name {prompt_name!r}: use 'query' or 'document'")
        if instruction is not None:
            if prompt_name == "document":
                raise UserError("documents take no instruction; drop prompt_name='document' or the instruction")
            if not instruction.strip():
                raise UserError("the instruction is empty")
            return instruction
        return DEFAULT_INSTRUCTION if prompt_name == "query" else None

    def _check_dim(self, dim: int | None) -> None:
        check_dim(dim, self.dimension)


def _l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
