"""Cutting a document into token-bounded chunks with exact character offsets into the original text.

Chunk offsets are character offsets into the file's decoded text, so `text[start:end]` is the
chunk. Cuts fall where a token starts on a character boundary, preferably at whitespace, and
where Unicode NFC normalization (which the tokenizer applies) cannot join the two sides.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .walk import DEFAULT_CHUNK_TOKENS, Document


@dataclass(frozen=True)
class Chunk:
    path: str
    index: int             # position of the chunk in its document
    start: int             # character offsets into the document's text
    end: int
    text: str
    n_tokens: int          # without the EOS


class Chunker:
    """Splits documents into chunks of at most `chunk_tokens` tokens, `overlap` tokens shared.

    With `chunk_tokens=None` a document is not split: it is cut to the embedder's token limit
    (keeping room for the EOS) and the cut is counted as a truncation.
    """

    def __init__(self, embedder, chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS, overlap: int | None = None):
        limit = embedder.max_tokens - 1   # one token is the EOS
        if chunk_tokens is not None and not 1 <= chunk_tokens <= limit:
            raise UserError(f"--chunk-tokens {chunk_tokens} is outside 1…{limit} "
                            f"(the model takes {embedder.max_tokens} tokens with the EOS)")
        self.truncate_only = chunk_tokens is None
        self.chunk_tokens = limit if chunk_tokens is None else chunk_tokens
        self.overlap = self.chunk_tokens // 8 if overlap is None else overlap
        if not 0 <= self.overlap < self.chunk_tokens:
            raise UserError(f"--overlap {self.overlap} must be at least 0 and less than "
                            f"--chunk-tokens {self.chunk_tokens}")
        self._embedder = embedder

    def split(self, document: Document) -> tuple[list[Chunk], bool]:
        """The document's chunks, and whether text was dropped (only without chunking)."""
        text = document.text
        cuts = _token_cuts(text, self._embedder.token_pieces(text))
        n_tokens = cuts.n_tokens
        chunks = []
        start = 0
        while True:
            limit = start + self.chunk_tokens
            if n_tokens <= limit:
                end = n_tokens
            else:
                window = 0 if self.truncate_only else self.chunk_tokens // 8
                end = cuts.best_cut(start, limit, window) or cuts.next_cut_after(limit)
            chunk, end = self._fitted_chunk(document, cuts, start, end, len(chunks))
            chunks.append(chunk)
            if end == n_tokens or self.truncate_only:
                return chunks, end < n_tokens
            start = cuts.best_cut(start, end - self.overlap, self.chunk_tokens // 8) or end

    def _fitted_chunk(self, document: Document, cuts: _TokenCuts, start: int, end: int,
                      index: int) -> tuple[Chunk, int]:
        """The chunk from token `start` to `end`, moved to an earlier cut if its text re-tokenizes longer."""
        while True:
            first, last = cuts.char_offset(start), cuts.char_offset(end)
            text = document.text[first:last]
            n_tokens = len(self._embedder.token_pieces(text))
            earlier = cuts.best_cut(start, end - 1, 0)
            if n_tokens <= self.chunk_tokens or earlier is None:
                return Chunk(document.path, index, first, last, text, n_tokens), end
            end = earlier


@dataclass
class _TokenCuts:
    """Where a text may be cut between tokens: token index → character offset."""

    n_tokens: int
    cut_tokens: np.ndarray          # token indices, ascending, that start at a safe place
    cut_chars: np.ndarray           # their character offsets in the original text
    whitespace: np.ndarray          # whether the character at the cut is whitespace
    _char_of: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self._char_of = dict(zip(self.cut_tokens.tolist(), self.cut_chars.tolist()))

    def char_offset(self, token: int) -> int:
        return self._char_of[token]

    def best_cut(self, after: int, limit: int, window: int) -> int | None:
        """The last cut in (after, limit], or a whitespace one among the last `window` tokens of that range."""
        lo, hi = np.searchsorted(self.cut_tokens, [after + 1, limit + 1])
        if lo == hi:
            return None
        first = max(lo, int(np.searchsorted(self.cut_tokens, limit - window)))
        spaced = np.flatnonzero(self.whitespace[first:hi])
        return int(self.cut_tokens[first + spaced[-1]] if len(spaced) else self.cut_tokens[hi - 1])

    def next_cut_after(self, token: int) -> int:
        return int(self.cut_tokens[np.searchsorted(self.cut_tokens, token, side="right")])


def _token_cuts(text: str, pieces: list[bytes]) -> _TokenCuts:
    """Safe cut points of `text` given the bytes of its tokens (which spell its NFC form)."""
    normalized = unicodedata.normalize("NFC", text)
    code_points = np.frombuffer(normalized.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    utf8_lengths = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    char_starts = np.concatenate([[0], np.cumsum(utf8_lengths)])          # byte offset of each char
    token_starts = np.concatenate([[0], np.cumsum([len(p) for p in pieces], dtype=np.int64)])
    if token_starts[-1] != char_starts[-1]:
        raise UserError("the model's tokens do not spell the text byte for byte; it cannot be chunked")
    chars = np.searchsorted(char_starts, token_starts)
    on_char = char_starts[np.minimum(chars, len(char_starts) - 1)] == token_starts
    tokens = np.flatnonzero(on_char)
    nfc_chars = chars[tokens]
    to_original = _nfc_to_original(text, normalized)
    if to_original is not None:
        keep = np.array([c in to_original for c in nfc_chars.tolist()], dtype=bool)
        tokens, nfc_chars = tokens[keep], nfc_chars[keep]
        original_chars = np.array([to_original[c] for c in nfc_chars.tolist()], dtype=np.int64)
    else:
        original_chars = nfc_chars
    whitespace = np.array([c < len(normalized) and normalized[c].isspace() for c in nfc_chars.tolist()], dtype=bool)
    return _TokenCuts(len(pieces), tokens, original_chars, whitespace)


def _nfc_to_original(text: str, normalized: str) -> dict[int, int] | None:
    """For a text that NFC changes: offsets in its NFC form → offsets in it, at safe boundaries.

    A boundary is safe when normalizing the two sides apart gives the same as normalizing the
    whole: the next character is a starter that does not compose with what precedes it.
    None when the text is already NFC (offsets are the same).
    """
    if text == normalized:
        return None
    mapping = {0: 0}
    segment_start, nfc_offset = 0, 0
    for i in range(1, len(text)):
        char = text[i]
        if unicodedata.combining(unicodedata.normalize("NFD", char)[0]):
            continue
        segment = unicodedata.normalize("NFC", text[segment_start:i])
        if unicodedata.normalize("NFC", text[segment_start:i + 1]) != segment + unicodedata.normalize("NFC", char):
            continue
        nfc_offset += len(segment)
        mapping[nfc_offset] = i
        segment_start = i
    mapping[len(normalized)] = len(text)
    return mapping
