"""Walking paths for text files: what a folder walk yields, skips and counts.

The walk streams: folders are listed one at a time and each file is read only when its turn
comes, so a folder of 10,000 files starts embedding at once and holds one file in memory.
Binary files (NUL bytes), empty files and unreadable files are skipped and counted; invalid
UTF-8 is replaced and counted; symlinks are followed, and a folder reached twice (a symlink
loop) is skipped.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import UserError

STDIN = "-"
SNIFF_BYTES = 8192
DEFAULT_CHUNK_TOKENS = 512


@dataclass(frozen=True)
class Document:
    path: str
    text: str
    sha256: str            # of the file's bytes
    mtime: float
    size: int


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
