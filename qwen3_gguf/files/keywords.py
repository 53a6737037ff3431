"""The keyword side of a collection: an SQLite FTS5 index over the chunk text, ranked by BM25.

The index is an external-content FTS5 table over `chunks`: it holds the index, not a second copy
of the text. Triggers on `chunks` write it, so every insert or delete of a chunk changes the
index in the same statement, and therefore the same transaction: a crash or Ctrl-C leaves both or
neither, and `integrity-check` compares the two.

Tokenizer: `trigram`. Measured on mixed English, Chinese and Japanese text
(benchmarks/keyword_tokenizers.py), `unicode61` makes a whole run of CJK characters one token, so
a word inside a Chinese or Japanese sentence is never found; `trigram` finds any substring of three
or more characters — CJK words, identifiers inside longer names (`repack` in
`repack_overrides`), error codes — and ranks English words as well as `unicode61` did there.
Terms of one or two characters (a two-character Chinese word such as 模型) have no trigram; a
query made only of such terms is answered by a scan of the chunk text instead.

A query is searched as text, never as FTS5 syntax: it is cut into terms (runs of letters and
digits, joined by `. - /` inside a name such as `llama.cpp` or `ERR-42`), and each term becomes a quoted FTS5 string;
a chunk matches when it holds any term, and BM25 ranks the matches.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

import numpy as np

# Part of every collection from schema version 2 on (the migration builds it for older ones).
KEYWORD_INDEX = """
CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='trigram');
CREATE TRIGGER chunk_text_added AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER chunk_text_removed AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER chunk_text_changed AFTER UPDATE OF text ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
"""
BUILD_KEYWORD_INDEX = "INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild');"
TRIGRAM = 3
TERM = re.compile(r"\w+(?:[.\-/]+\w+)*")


@dataclass(frozen=True)
class Ranked:
    ids: np.ndarray            # chunk ids, best first
    scores: np.ndarray         # BM25 (higher is better); for a scan, the number of terms found


def terms(query: str) -> list[str]:
    """The terms of a query, lowercased, each once, in order."""
    return list(dict.fromkeys(term.lower() for term in TERM.findall(query)))


def best_matches(db: sqlite3.Connection, query: str, n: int, path_glob: str | None = None) -> Ranked:
    """The n chunks that match `query`'s terms best by BM25 (ties: the older chunk first).

    `path_glob` keeps chunks of documents whose path matches it (an SQLite GLOB pattern).
    """
    words = terms(query)
    long = [term for term in words if len(term) >= TRIGRAM]
    where_path = " AND c.document_id IN (SELECT id FROM documents WHERE path GLOB ?)" if path_glob else ""
    glob = [path_glob] if path_glob else []
    if long:
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in long)
        rows = db.execute("SELECT c.id, -bm25(chunks_fts) FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
                          f"WHERE chunks_fts MATCH ?{where_path} ORDER BY bm25(chunks_fts), c.id LIMIT ?",
                          [match, *glob, n]).fetchall()
    elif words:
        found = " + ".join(["(instr(lower(c.text), ?) > 0)"] * len(words))
        rows = db.execute(f"SELECT c.id, {found} AS found FROM chunks c WHERE found > 0{where_path} "
                          "ORDER BY found DESC, c.id LIMIT ?", [*words, *glob, n]).fetchall()
    else:
        rows = []
    return Ranked(np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64))


def index_matches_chunks(db: sqlite3.Connection) -> bool:
    """Whether the keyword index holds exactly the chunks' text (FTS5's own integrity check)."""
    try:
        db.execute("INSERT INTO chunks_fts (chunks_fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError:
        return False
    return True
