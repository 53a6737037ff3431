"""Which FTS5 tokenizer the keyword index uses: `unicode61` or `trigram`, on mixed English, Chinese
and Japanese text.

A small corpus of passages in the three languages (and code), and queries with one right passage
each, in four kinds: English words, identifiers, CJK words of two characters, CJK words of three
or more. Every query is cut into terms and searched as quoted FTS5 strings, OR-ed, ranked by BM25;
a query is answered when its passage is the first hit. Compared:

- `unicode61`: FTS5's default word tokenizer;
- `trigram`: FTS5's substring tokenizer, MATCH alone (terms under three characters cannot match);
- `collection`: what `Collection.search(mode="keyword")` does (the word index for queries in spaced
  scripts, trigram for the others and for words no chunk holds whole, and a scan of the chunk
  text when a query has only one- or two-character terms).

Then the index size and the keyword query time of each tokenizer over the corpus repeated to
--rows chunks.

    python benchmarks/keyword_tokenizers.py     # prints tables, writes benchmarks/keyword_tokenizers.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwen3_gguf.files.keywords import terms  # noqa: E402
from qwen3_gguf.files.store import Collection  # noqa: E402

PASSAGES = [
    "Quantization shrinks the weight files of a model and speeds up inference on a laptop.",
    "The reranker scores each document with the probability that it answers the query.",
    "Whales are mammals that breathe air and sing long songs in the deep ocean.",
    "def repack_overrides(patterns): return [(p, 'CPU_REPACK') for p in patterns]",
    "The error ERR_CONNECTION_REFUSED means nothing listens on that port.",
    "class EmbeddingCache: keeps vectors of chunks keyed by their content hash.",
    "模型量化可以把权重文件缩小很多，推理速度也会提高。",
    "重排序模型给每个文档打分，分数是文档回答问题的概率。",
    "鲸鱼是哺乳动物，它们在深海里唱很长的歌。",
    "北京是中国的首都，有很多历史悠久的建筑。",
    "东京都的图书馆里可以借到新的词典。",
    "東京都の図書館で新しい辞書を借りました。",
    "量子化するとモデルの重みファイルが小さくなり、推論も速くなります。",
    "明日は雨が降るので、傘を持って出かけてください。",
    "富士山は日本で一番高い山です。",
    "The library in Tokyo lends new dictionaries to everyone.",
]
QUERIES = {
    "English word": [("quantization", 0), ("reranker", 1), ("whales", 2), ("dictionaries", 15), ("laptop", 0)],
    "identifier": [("repack_overrides", 3), ("ERR_CONNECTION_REFUSED", 4), ("EmbeddingCache", 5),
                   ("CPU_REPACK", 3), ("content hash", 5)],
    "CJK word, 2 characters": [("量化", 6), ("鲸鱼", 8), ("北京", 9), ("辞書", 11), ("傘", 13), ("概率", 7)],
    "CJK word, 3+ characters": [("推理速度", 6), ("重排序", 7), ("图书馆", 10), ("図書館", 11), ("富士山", 14),
                                ("哺乳动物", 8)],
}
TOKENIZERS = {"unicode61": "unicode61", "trigram": "trigram"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="chunks in the size and speed measurement")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "keyword_tokenizers.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        answered = {name: first_hits(fts_database(Path(folder) / f"{name}.db", tokenizer, PASSAGES))
                    for name, tokenizer in TOKENIZERS.items()}
        answered["collection"] = collection_first_hits(Path(folder) / "collection.db")
        print("| kind | " + " | ".join(answered) + " |\n|---|" + "---|" * len(answered))
        for kind, queries in QUERIES.items():
            print(f"| {kind} | " + " | ".join(f"{sum(answered[name][kind])}/{len(queries)}" for name in answered)
                  + " |")
        corpus = [PASSAGES[i % len(PASSAGES)] + f" {i}" for i in range(args.rows)]
        sizes = {}
        for name, tokenizer in TOKENIZERS.items():
            db = fts_database(Path(folder) / f"{name}-big.db", tokenizer, corpus)
            sizes[name] = size_and_speed(db, name)
    print(f"\n{args.rows:,} chunks (~{np.mean([len(p) for p in PASSAGES]):.0f} characters each)")
    print("| tokenizer | index MiB | text MiB | query p50 ms |\n|---|---|---|---|")
    for name, row in sizes.items():
        print(f"| {name} | {row['index_mib']:.1f} | {row['text_mib']:.1f} | {row['query_ms_p50']:.2f} |")
    args.json.write_text(json.dumps({"queries": {kind: [q for q, _ in qs] for kind, qs in QUERIES.items()},
                                     "first_hit": {name: {kind: sum(v) for kind, v in kinds.items()}
                                                   for name, kinds in answered.items()},
                                     "rows": args.rows, "size_and_speed": sizes}, indent=1, ensure_ascii=False) + "\n")


def fts_database(path: Path, tokenizer: str, texts: list[str]) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    db.execute(f"CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id', "
               f"tokenize='{tokenizer}')")
    db.executemany("INSERT INTO chunks (id, text) VALUES (?, ?)", enumerate(texts))
    db.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild')")
    db.commit()
    return db


def match(query: str) -> str:
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms(query))


def first_hits(db: sqlite3.Connection) -> dict[str, list[bool]]:
    def first(query: str) -> int | None:
        row = db.execute("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank, rowid LIMIT 1",
                         (match(query),)).fetchone()
        return row[0] if row else None

    return {kind: [first(q) == answer for q, answer in queries] for kind, queries in QUERIES.items()}


def collection_first_hits(path: Path) -> dict[str, list[bool]]:
    vectors = np.random.default_rng(0).standard_normal((len(PASSAGES), 32))
    with Collection(path) as collection:
        collection.add([{"path": f"/corpus/{i:02d}.txt", "chunk": 0, "start": 0, "end": len(text), "text": text,
                         "vector": vector} for i, (text, vector) in enumerate(zip(PASSAGES, vectors))],
                       model="synthetic")

        def first(query: str) -> str | None:
            hits = collection.search(query, k=1, mode="keyword")
            return hits[0].path if hits else None

        return {kind: [first(q) == f"/corpus/{answer:02d}.txt" for q, answer in queries]
                for kind, queries in QUERIES.items()}


def size_and_speed(db: sqlite3.Connection, name: str) -> dict:
    page = db.execute("PRAGMA page_size").fetchone()[0]
    index_pages = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'chunks_fts%'").fetchone()[0] \
        if has_dbstat(db) else None
    text_bytes = db.execute("SELECT sum(length(CAST(text AS BLOB))) FROM chunks").fetchone()[0]
    if index_pages is None:     # no dbstat: the file size less the text table's share
        index_pages = db.execute("PRAGMA page_count").fetchone()[0] * page - text_bytes
    queries = [q for qs in QUERIES.values() for q, _ in qs if name != "trigram" or len(q) >= 3]
    times = []
    for query in queries * 3:
        started = time.perf_counter()
        db.execute("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT 10",
                   (match(query),)).fetchall()
        times.append(1000 * (time.perf_counter() - started))
    return {"index_mib": round(index_pages / 2**20, 2), "text_mib": round(text_bytes / 2**20, 2),
            "query_ms_p50": round(float(np.percentile(times, 50)), 2)}


def has_dbstat(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT 1 FROM dbstat LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


if __name__ == "__main__":
    main()
