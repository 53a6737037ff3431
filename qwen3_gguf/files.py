"""Files in: walk paths for text files, split them into token chunks, embed them in batches.

The walk streams: folders are listed one at a time and each file is read only when its turn
comes, so a folder of 10,000 files starts embedding at once and holds one file in memory.
Binary files (NUL bytes), empty files and unreadable files are skipped and counted; invalid
UTF-8 is replaced and counted; symlinks are followed, and a folder reached twice (a symlink
loop) is skipped.

Chunk offsets are character offsets into the file's decoded text, so `text[start:end]` is the
chunk. Cuts fall where a token starts on a character boundary, preferably at whitespace, and
where Unicode NFC normalization (which the tokenizer applies) cannot join the two sides.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError

STDIN = "-"
SNIFF_BYTES = 8192
DEFAULT_CHUNK_TOKENS = 512
BATCH_CHUNKS = 32          # chunks embedded per call, and per database commit in the store


@dataclass(frozen=True)
class Document:
    path: str
    text: str
    sha256: str            # of the file's bytes
    mtime: float
    size: int


@dataclass(frozen=True)
class Chunk:
    path: str
    index: int             # position of the chunk in its document
    start: int             # character offsets into the document's text
    end: int
    text: str
    n_tokens: int          # without the EOS


@dataclass
class Counts:
    """What happened to the inputs; the summary line prints it."""

    files: int = 0
    chunks: int = 0
    tokens: int = 0
    binary: int = 0
    empty: int = 0
    unreadable: int = 0
    invalid_utf8: int = 0
    repeated_folders: int = 0
    truncated: int = 0

    def summary(self) -> str:
        """Files, chunks and tokens, then whatever was skipped, replaced or cut."""
        return "; ".join([self.totals(), *self.notes()])

    def totals(self) -> str:
        return f"{self.files} files, {self.chunks} chunks, {self.tokens} tokens"

    def notes(self) -> list[str]:
        skipped = [f"{n} {what}" for n, what in ((self.binary, "binary"), (self.empty, "empty"),
                                                 (self.unreadable, "unreadable")) if n]
        notes = ["skipped " + ", ".join(skipped)] if skipped else []
        if self.invalid_utf8:
            notes.append(f"{self.invalid_utf8} with invalid UTF-8 (replaced)")
        if self.truncated:
            notes.append(f"{self.truncated} truncated")
        if self.repeated_folders:
            notes.append(f"{self.repeated_folders} folders reached twice through symlinks (skipped)")
        return notes


# --- walking -------------------------------------------------------------------------------------


class TextFiles:
    """The text files named by `paths` (files, folders walked recursively, "-" for stdin).

    In folders, hidden entries are skipped, `include` patterns keep only matching files and
    `exclude` patterns drop files and folders. A pattern without "/" matches the name, one
    with "/" the path relative to the folder walked.
    """

    def __init__(self, paths: Sequence[str], *, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 counts: Counts | None = None):
        if not paths:
            raise UserError("no paths given: name files, folders, or - for stdin")
        for path in paths:
            if path == STDIN:
                continue
            if not os.path.exists(path):
                raise UserError(f"no such file or folder: {path}")
            if not os.access(path, os.R_OK):
                raise UserError(f"cannot read {path}: permission denied")
        self.paths = list(paths)
        self.include = list(include)
        self.exclude = list(exclude)
        self.counts = counts if counts is not None else Counts()
        self.no_text: list[str] = []  # files found but skipped as binary or empty

    def __iter__(self) -> Iterator[Document]:
        for path in self.paths:
            if path == STDIN:
                document = self._document(STDIN, sys.stdin.buffer.read(), mtime=0.0)
                if document:
                    yield document
            elif os.path.isdir(path):
                yield from self._walk(path)
            else:
                document = self._read(path)
                if document:
                    yield document

    def _walk(self, root: str) -> Iterator[Document]:
        seen: set[tuple[int, int]] = set()
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                identity = os.stat(folder)
                with os.scandir(folder) as scan:
                    entries = sorted(scan, key=lambda e: e.name)
            except OSError:
                self.counts.unreadable += 1
                continue
            if (identity.st_dev, identity.st_ino) in seen:
                self.counts.repeated_folders += 1
                continue
            seen.add((identity.st_dev, identity.st_ino))
            subfolders = []
            for entry in entries:
                relative = os.path.relpath(entry.path, root).replace(os.sep, "/")
                if entry.name.startswith(".") or _matches(self.exclude, entry.name, relative):
                    continue
                try:
                    is_folder, is_file = entry.is_dir(), entry.is_file()
                except OSError:
                    is_folder = is_file = False
                if is_folder:
                    subfolders.append(entry.path)
                elif not is_file:
                    self.counts.unreadable += 1      # a broken symlink, a socket, a device
                elif not self.include or _matches(self.include, entry.name, relative):
                    document = self._read(entry.path)
                    if document:
                        yield document
            stack.extend(reversed(subfolders))

    def _read(self, path: str) -> Document | None:
        try:
            with open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
                if b"\0" in head:
                    self.counts.binary += 1
                    self.no_text.append(path)
                    return None
                data = head + f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except OSError:
            self.counts.unreadable += 1
            return None
        return self._document(path, data, mtime=mtime)

    def _document(self, path: str, data: bytes, *, mtime: float) -> Document | None:
        if b"\0" in data:
            self.counts.binary += 1
            self.no_text.append(path)
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            self.counts.invalid_utf8 += 1
        if not text.strip():
            self.counts.empty += 1
            self.no_text.append(path)
            return None
        self.counts.files += 1
        return Document(path, text, hashlib.sha256(data).hexdigest(), mtime, len(data))


def _matches(patterns: Sequence[str], name: str, relative: str) -> bool:
    return any(fnmatch.fnmatch(relative if "/" in p else name, p) for p in patterns)


# --- chunking ------------------------------------------------------------------------------------


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
            raise UserError(f"--overlap {self.overlap} must be at least 0 and less than --chunk-tokens {self.chunk_tokens}")
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

    def _fitted_chunk(self, document: Document, cuts: _TokenCuts, start: int, end: int, index: int) -> tuple[Chunk, int]:
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


# --- embedding -----------------------------------------------------------------------------------


@dataclass
class EmbeddedBatch:
    documents: list[Document]
    chunks: list[Chunk]             # the documents' chunks, in order
    vectors: np.ndarray             # one row per chunk


def embed_documents(embedder, documents: Iterable[Document], chunker: Chunker, *, counts: Counts,
                    dim: int | None = None, instruction: str | None = None, truncate: bool = True,
                    batch_chunks: int | None = None) -> Iterator[EmbeddedBatch]:
    """Chunk and embed documents, yielding batches of whole documents as they are done.

    `instruction` embeds the chunks as queries with that task description; without chunking,
    `truncate=False` makes a document over the token limit an error.
    """
    batch_chunks = batch_chunks or BATCH_CHUNKS
    pending_documents: list[Document] = []
    pending_chunks: list[Chunk] = []
    for document in documents:
        chunks, truncated = chunker.split(document)
        if truncated and not truncate:
            raise UserError(f"{document.path} is longer than {chunker.chunk_tokens + 1} tokens "
                            "(truncation is off; split it with --chunk-tokens)")
        counts.truncated += truncated
        pending_documents.append(document)
        pending_chunks.extend(chunks)
        if len(pending_chunks) >= batch_chunks:
            yield _embedded(embedder, pending_documents, pending_chunks, dim, instruction, counts)
            pending_documents, pending_chunks = [], []
    if pending_documents:
        yield _embedded(embedder, pending_documents, pending_chunks, dim, instruction, counts)


def _embedded(embedder, documents: list[Document], chunks: list[Chunk], dim: int | None,
              instruction: str | None, counts: Counts) -> EmbeddedBatch:
    vectors = embedder.encode([c.text for c in chunks], dim=dim, instruction=instruction)
    counts.chunks += len(chunks)
    counts.tokens += sum(c.n_tokens for c in chunks)
    return EmbeddedBatch(documents, chunks, vectors)
