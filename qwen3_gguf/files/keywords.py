"""The keyword side of a collection: SQLite FTS5 indexes over the chunk text, ranked by BM25.

Both indexes are external-content FTS5 tables over `chunks`: they hold the index, not a second
copy of the text. Triggers on `chunks` write them, so every insert or delete of a chunk changes the
indexes in the same statement, and therefore the same transaction: a crash or Ctrl-C leaves all or
none, and `integrity-check` compares each with the chunks.

Two tokenizers, each for the text it can cut (benchmarks/keyword_tokenizers.py measured both on
mixed English, Chinese and Japanese text):

- `chunks_words` (`unicode61`, words): queries in scripts that put spaces between words. A word
  is one token, so matching a term walks one list of chunk ids, and a term's chunk count is a
  cheap, bounded count.
- `chunks_fts` (`trigram`): queries holding Chinese, Japanese, Thai and other text without spaces,
  where `unicode61` makes a whole run of characters one token and never finds a word inside it;
  trigram finds any run of three or more characters. A query of words that no chunk holds as a
  word is searched here too, so a part of an identifier (`Embedding` in `EmbeddingCache`) is still
  found. Terms of one or two characters (a two-character Chinese word such as 模型) have no
  trigram; a query made only of such terms is answered by a scan of the chunk text instead.

Terms in at least half the chunks carry no weight. BM25's idf, log((N - n + 0.5) / (n + 0.5)) for
a term in n of N chunks, is zero or below there (FTS5 raises it to 1e-6): such a term tells
chunks apart by nothing but its count. So on the word index those terms are left out of the BM25
ranking; a chunk that holds only them scores 0 and follows every scored chunk, older chunks
first. This is what bounds the cost: BM25 walks the chunks of the query's informative terms only,
and a word found nearly everywhere costs a count of at most N/2 ids.

A query is searched as text, never as FTS5 syntax: it is cut into terms (runs of letters and
digits, joined by `. - /` inside a name such as `llama.cpp` or `ERR-42`), and each term becomes a
quoted FTS5 string; a chunk matches when it holds any term, and BM25 ranks the matches.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

import numpy as np


def _fts_index(table: str, tokenizer: str, trigger: str) -> str:
    """An FTS5 index over chunks.text, kept in step with the chunks by triggers in the same transactions."""
    return f"""
CREATE VIRTUAL TABLE {table} USING fts5(text, content='chunks', content_rowid='id', tokenize='{tokenizer}');
CREATE TRIGGER {trigger}_added AFTER INSERT ON chunks BEGIN
    INSERT INTO {table} (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER {trigger}_removed AFTER DELETE ON chunks BEGIN
    INSERT INTO {table} ({table}, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER {trigger}_changed AFTER UPDATE OF text ON chunks BEGIN
    INSERT INTO {table} ({table}, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO {table} (rowid, text) VALUES (new.id, new.text);
END;
"""


# Part of every collection from schema version 2 on (the migration builds it for older ones).
KEYWORD_INDEX = _fts_index("chunks_fts", "trigram", "chunk_text")
BUILD_KEYWORD_INDEX = "INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild');"
# Part of every collection from schema version 3 on (the migration builds it for older ones).
WORD_INDEX = _fts_index("chunks_words", "unicode61", "chunk_words")
BUILD_WORD_INDEX = "INSERT INTO chunks_words (chunks_words) VALUES ('rebuild');"
INDEXES = ("chunks_words", "chunks_fts")
TRIGRAM = 3
TERM = re.compile(r"\w+(?:[.\-/]+\w+)*")
# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, kana, CJK ideographs.
WITHOUT_SPACES = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff"
                            "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff]")


@dataclass(frozen=True)
class Ranked:
    ids: np.ndarray            # chunk ids, best first
    scores: np.ndarray         # BM25 (higher is better; 0: only weightless terms); for a scan, the terms found


def terms(query: str) -> list[str]:
    """The terms of a query, lowercased, each once, in order."""
    return list(dict.fromkeys(term.lower() for term in TERM.findall(query)))


def best_matches(db: sqlite3.Connection, query: str, n: int, path_glob: str | None = None) -> Ranked:
    """The n chunks that match `query`'s terms best by BM25 (ties: the older chunk first).

    `path_glob` keeps chunks of documents whose path matches it (an SQLite GLOB pattern).
    """
    words = terms(query)
    where_path = " AND c.document_id IN (SELECT id FROM documents WHERE path GLOB ?)" if path_glob else ""
    glob = [path_glob] if path_glob else []
    rows = []
    if words and not any(WITHOUT_SPACES.search(term) for term in words):
        rows = _by_words(db, words, n, where_path, glob)
    if not rows:
        rows = _by_trigrams(db, words, n, where_path, glob)
    return Ranked(np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64))


def _by_words(db: sqlite3.Connection, words: list[str], n: int, where_path: str, glob: list[str]) -> list[tuple]:
    """BM25 on the word index over the terms in fewer than half the chunks; then the chunks that hold
    only terms in half of them or more, scored 0, oldest first."""
    half = (db.execute("SELECT count(*) FROM chunks").fetchone()[0] + 1) // 2
    informative, weightless = [], []
    for term in words:
        found = db.execute("SELECT count(*) FROM (SELECT 1 FROM chunks_words WHERE chunks_words MATCH ? LIMIT ?)",
                           [_quoted(term), half]).fetchone()[0]
        if found:
            (weightless if found >= half else informative).append(term)
    rows = []
    if informative:
        rows = _by_bm25(db, "chunks_words", informative, n, where_path, glob)
    if weightless and len(rows) < n:
        scored = {chunk_id for chunk_id, _ in rows}
        rest = db.execute(f"SELECT chunks_words.rowid FROM chunks_words{_chunks_join('chunks_words', where_path)} "
                          f"WHERE chunks_words MATCH ?{where_path} ORDER BY chunks_words.rowid LIMIT ?",
                          [_any_of(weightless), *glob, n + len(rows)])
        rows += [(chunk_id, 0.0) for (chunk_id,) in rest if chunk_id not in scored][:n - len(rows)]
    return rows


def _by_trigrams(db: sqlite3.Connection, words: list[str], n: int, where_path: str, glob: list[str]) -> list[tuple]:
    """BM25 on the trigram index; a scan of the chunk text when every term is shorter than a trigram."""
    long = [term for term in words if len(term) >= TRIGRAM]
    if long:
        return _by_bm25(db, "chunks_fts", long, n, where_path, glob)
    if words:
        found = " + ".join(["(instr(lower(c.text), ?) > 0)"] * len(words))
        return db.execute(f"SELECT c.id, {found} AS found FROM chunks c WHERE found > 0{where_path} "
                          "ORDER BY found DESC, c.id LIMIT ?", [*words, *glob, n]).fetchall()
    return []


def _by_bm25(db: sqlite3.Connection, index: str, words: list[str], n: int, where_path: str,
             glob: list[str]) -> list[tuple]:
    """The n chunks holding any of `words` with the best BM25 on `index` (ties: the older chunk first)."""
    return db.execute(f"SELECT {index}.rowid, -bm25({index}) FROM {index}{_chunks_join(index, where_path)} "
                      f"WHERE {index} MATCH ?{where_path} ORDER BY bm25({index}), {index}.rowid LIMIT ?",
                      [_any_of(words), *glob, n]).fetchall()


def _chunks_join(index: str, where_path: str) -> str:
    """The join to the chunks that a path filter needs. Without one the index's rowids are the chunk
    ids: joining every match to its chunk row costs more than BM25 itself (a B-tree lookup into a
    table of text pages for each of possibly many thousand matches)."""
    return f" JOIN chunks c ON c.id = {index}.rowid" if where_path else ""


def _quoted(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _any_of(words: list[str]) -> str:
    return " OR ".join(_quoted(term) for term in words)


def index_matches_chunks(db: sqlite3.Connection) -> bool:
    """Whether the keyword indexes hold exactly the chunks' text (FTS5's own integrity check)."""
    try:
        for index in INDEXES:
            db.execute(f"INSERT INTO {index} ({index}, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError:
        return False
    return True
