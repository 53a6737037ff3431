"""Search latency of the SQLite collection at a laptop's scale: 10⁴, 10⁵, 10⁶ chunks.

Builds synthetic collections through `Collection.add` (random unit vectors, ~1,500 characters of
text per chunk, 10 chunks per file) and measures, in fresh processes:

- warm: p50/p99 of `Collection.search(vector=...)` over repeated queries in one process;
- first query after open: opening the collection and answering one query, page cache warm;
- cold: the same after the database and matrix files were dropped from the page cache
  (posix_fadvise DONTNEED), p50/p99 over a few runs;
- exactness: every measured query's top 10 against a float64 brute-force scan of the vectors
  read from SQLite (the source of truth);
- keyword and hybrid: p50/p99 of `Collection.search(mode="keyword")` and of hybrid search (the
  query text with its vector given) over three query sets: a rare term (one chunk's name), a
  mid-frequency term (in a quarter of the chunks: BM25 scores every one of them) and two common
  words (in every chunk: weightless, see files/keywords.py);
- the sizes of the two FTS5 indexes (words and trigrams), and `Collection.add` throughput with
  both, with the word index only, and with neither (rounds alternated, medians);
- with `--index-model GGUF`, only this: `Collection.index` (what `qwen3-gguf index` runs) of a
  folder of text files end to end with that model, with both keyword indexes and with neither
  (rounds alternated, medians), kept in the JSON beside the collections' rows;
- the old path for reference (every row's vector read out of SQLite per query, as release 1 did);
- RSS (current and peak) of the searching process, and the size of the files on disk.

    python benchmarks/store.py                      # 10⁴, 10⁵, 10⁶ at 1,024 dims; 10⁴, 10⁵ at 4,096
    python benchmarks/store.py --sizes 10000 --dims 1024 --queries 20
    python benchmarks/store.py --index-model benchmarks/.cache/embedding-0.6b-shaped-q8_0.gguf

Prints a table and writes benchmarks/store.json (keeping the rows of collections not measured
this time).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import BENCH, ROOT, cpu_kind, write_section

from qwen3_gguf.atomic import write_text_atomically
from qwen3_gguf.files.store import Collection
from qwen3_gguf.files.vectors import matrix_path

CHUNKS_PER_FILE = 10
TEXT_CHARS = 1500
BUILD_BATCH = 20_000
TOP_K = 10
ADD_THROUGHPUT_ROWS = 10_000   # chunks added when indexing throughput is compared with and without FTS
ADD_THROUGHPUT_ROUNDS = 3
INDEX_FILES = 12               # files of TEXT_CHARS characters indexed end to end with a real model
INDEX_ROUNDS = 4
SHARDS = 4                     # chunk i holds the word shard{i % SHARDS}: a term in a quarter of the chunks
KEYWORD_TRIGGERS = {"words": ("chunk_words_added", "chunk_words_removed", "chunk_words_changed"),
                    "trigram": ("chunk_text_added", "chunk_text_removed", "chunk_text_changed")}
WORDS = ("the of and to in is that for it as with was on be by this are from at or an have not which but "
         "model vector search index chunk query file embedding weight tensor layer token quant cache").split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="chunk counts at --dims' first entry")
    parser.add_argument("--dims", default="1024,4096")
    parser.add_argument("--max-rows-4096", type=int, default=100_000,
                        help="the largest collection built at 4,096 dims (10⁶ would be 16 GB of float32)")
    parser.add_argument("--queries", type=int, default=50, help="warm queries per collection")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=ROOT / ".bench-store", help="where collections are built")
    parser.add_argument("--keep", action="store_true", help="keep the collections built")
    parser.add_argument("--json", type=Path, default=BENCH / "store.json")
    parser.add_argument("--report", action="store_true", help="only rewrite results.md's section from --json")
    parser.add_argument("--index-model", type=Path, metavar="GGUF",
                        help="only time `index` end to end with this model, with and without the keyword indexes")
    parser.add_argument("--index-files", type=int, default=INDEX_FILES, help="text files indexed per run")
    parser.add_argument("--measure", nargs=2, metavar=("DB", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1], args.queries)))
        return
    if args.report:
        write_results_section(json.loads(args.json.read_text()))
        return
    if args.index_model:
        args.dir.mkdir(parents=True, exist_ok=True)
        timed = index_throughput(args.dir, args.index_model, args.index_files)
        print(json.dumps(timed, indent=1))
        report = json.loads(args.json.read_text())
        write_json(args.json, report["rows"], index_end_to_end=timed)
        write_results_section(json.loads(args.json.read_text()))
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    kept = json.loads(args.json.read_text())["rows"] if args.json.is_file() else []
    for dim in [int(d) for d in args.dims.split(",")]:
        for size in [int(s) for s in args.sizes.split(",")]:
            if dim > 1024 and size > args.max_rows_4096:
                continue
            rows.append(run_one(args, size, dim))
            print(format_row(rows[-1]), flush=True)
            write_json(args.json, merged(kept, rows))
    print()
    print(table(merged(kept, rows)))
    print()
    print(keyword_table(merged(kept, rows)))
    write_results_section(json.loads(args.json.read_text()))


def merged(kept: list[dict], measured: list[dict]) -> list[dict]:
    """This run's rows, and the earlier run's rows for collections this run did not measure."""
    done = {(row["chunks"], row["dim"]) for row in measured}
    rows = [row for row in kept if (row["chunks"], row["dim"]) not in done] + measured
    return sorted(rows, key=lambda row: (row["dim"], row["chunks"]))


def run_one(args, size: int, dim: int) -> dict:
    db = args.dir / f"store-{size}x{dim}.db"
    for stale in db.parent.glob(db.name + "*"):
        stale.unlink()
    started = time.perf_counter()
    with Collection(db) as collection:
        collection.add(records(size, dim), model=f"synthetic-{dim}")
    build_s = time.perf_counter() - started
    row = {"chunks": size, "dim": dim, "build_s": round(build_s, 1), "load_average": round(os.getloadavg()[0], 1),
           "cpu": cpu_kind(),
           "db_bytes": sum(p.stat().st_size for p in [db, db.with_name(db.name + "-wal")] if p.exists()),
           "vectors_bytes": matrix_path(db).stat().st_size}
    warm = child(db, "warm", args.queries)
    row.update(warm)
    row.update(child(db, "keyword", args.queries))
    row.update(index_bytes(db))
    row.update(add_throughput(args.dir, dim, min(size, ADD_THROUGHPUT_ROWS)))
    colds = [child(db, "cold", 1) for _ in range(args.cold_runs)]
    cold_first = [c["first_query_ms"] for c in colds]
    row["cold_first_query_ms_p50"] = round(float(np.percentile(cold_first, 50)), 1)
    row["cold_first_query_ms_p99"] = round(float(np.percentile(cold_first, 99)), 1)
    started = time.perf_counter()
    with Collection(db) as collection:                      # one more file: goes to the delta file
        collection.add(records(CHUNKS_PER_FILE, dim, first_file=size // CHUNKS_PER_FILE))
    row["add_one_file_s"] = round(time.perf_counter() - started, 2)
    matrix_path(db).unlink()
    rebuilt = child(db, "first", 1)
    row["first_query_after_matrix_file_lost_ms"] = rebuilt["first_query_ms"]
    if size <= 100_000:
        row["sqlite_scan_ms"] = child(db, "sqlite-scan", 3)["sqlite_scan_ms"]
    if not args.keep:
        for path in db.parent.glob(db.name + "*"):
            path.unlink()
    return row


def records(size: int, dim: int, first_file: int = 0):
    """Synthetic chunks: unit vectors from a seeded generator, text of ~TEXT_CHARS characters."""
    texts = synthetic_texts()
    for start in range(0, size, BUILD_BATCH):
        vectors = batch_vectors(first_file + start // BUILD_BATCH, min(BUILD_BATCH, size - start), dim)
        for i, vector in enumerate(vectors, start):
            text = f"{texts[i % len(texts)]} chunk-{i} shard{i % SHARDS}"   # a rare term: one chunk's name
            yield {"path": f"/synthetic/file{first_file + i // CHUNKS_PER_FILE:07d}.txt",
                   "chunk": i % CHUNKS_PER_FILE, "start": 0, "end": len(text), "text": text, "vector": vector}


def batch_vectors(batch: int, rows: int, dim: int) -> np.ndarray:
    vectors = np.random.default_rng(batch).standard_normal((rows, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@functools.cache
def synthetic_texts() -> list[str]:
    """1,000 texts of random words, ~TEXT_CHARS characters each."""
    rng = np.random.default_rng(0)
    word_count = TEXT_CHARS // 5
    return [" ".join(rng.choice(WORDS, word_count))[:TEXT_CHARS] for _ in range(1000)]


def queries(n: int, dim: int) -> np.ndarray:
    """Stored vectors plus noise (so each query has a true near neighbour), normalized."""
    rng = np.random.default_rng(12345)
    base = batch_vectors(0, 1000, dim)[rng.integers(0, 1000, n)]   # the first rows stored
    noisy = base + 0.5 * rng.standard_normal(base.shape, dtype=np.float32) / np.sqrt(dim)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


# --- measuring, in a fresh process -----------------------------------------------------------------


def child(db: Path, mode: str, n_queries: int) -> dict:
    if mode == "cold":
        evict(db)
    output = subprocess.run([sys.executable, __file__, "--measure", str(db), mode, "--queries", str(n_queries)],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def evict(db: Path) -> None:
    """Drop the collection's files from the page cache (no root needed for clean pages)."""
    for path in db.parent.glob(db.name + "*"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(db: Path, mode: str, n_queries: int) -> dict:
    if mode == "sqlite-scan":
        return {"sqlite_scan_ms": round(sqlite_scan(db, n_queries), 1)}
    if mode == "keyword":
        return keyword_and_hybrid(db, n_queries)
    started = time.perf_counter()
    collection = Collection(db, create=False)
    dim = collection.dim
    query_set = queries(max(n_queries, 1), dim)
    first = collection.search(vector=query_set[0], k=TOP_K)
    result = {"first_query_ms": round(1000 * (time.perf_counter() - started), 1)}
    if mode != "warm":
        return result
    latencies, cpu, found = [], [], []
    for query in query_set:
        started, started_cpu = time.perf_counter(), time.process_time()
        hits = collection.search(vector=query, k=TOP_K)
        latencies.append(1000 * (time.perf_counter() - started))
        cpu.append(1000 * (time.process_time() - started_cpu))
        found.append([(h.path, h.chunk) for h in hits])
    result.update(warm_ms_p50=round(float(np.percentile(latencies, 50)), 2),
                  warm_ms_p99=round(float(np.percentile(latencies, 99)), 2),
                  warm_cpu_ms_p50=round(float(np.percentile(cpu, 50)), 2), **memory())
    checked = min(len(query_set), 5)
    result["exact_top10"] = found[:checked] == brute_force(db, query_set[:checked])
    assert first and found
    return result


def keyword_and_hybrid(db: Path, n_queries: int) -> dict:
    """Warm p50/p99 of keyword and hybrid searches, for rare-term and common-word queries."""
    collection = Collection(db, create=False)
    chunks = len(collection)
    rng = np.random.default_rng(7)
    texts = {"rare": [f"chunk-{i}" for i in rng.integers(0, chunks, n_queries)],
             "mid": [f"shard{i}" for i in rng.integers(0, SHARDS, n_queries)],
             "common": [" ".join(rng.choice(WORDS[-16:], 2, replace=False)) for _ in range(n_queries)]}
    vectors = queries(n_queries, collection.dim)
    result = {}
    for kind, query_texts in texts.items():
        for mode in ("keyword", "hybrid"):
            latencies = []
            for text, vector in zip(query_texts, vectors):
                started = time.perf_counter()
                hits = collection.search(text, vector=vector if mode == "hybrid" else None, k=TOP_K, mode=mode)
                latencies.append(1000 * (time.perf_counter() - started))
                assert hits
            result[f"{mode}_{kind}_ms_p50"] = round(float(np.percentile(latencies, 50)), 2)
            result[f"{mode}_{kind}_ms_p99"] = round(float(np.percentile(latencies, 99)), 2)
    return result


def index_bytes(db: Path) -> dict:
    """The bytes of each keyword index's tables (SQLite's dbstat)."""
    import sqlite3

    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    size = "SELECT sum(pgsize) FROM dbstat WHERE name LIKE ?"
    return {"words_bytes": connection.execute(size, ["chunks_words%"]).fetchone()[0],
            "fts_bytes": connection.execute(size, ["chunks_fts%"]).fetchone()[0]}


def add_throughput(folder: Path, dim: int, rows: int) -> dict:
    """Chunks stored per second by `Collection.add` with both keyword indexes, with the word index only
    and with neither (the other's triggers dropped), rounds alternated; medians."""
    rates = {"both": [], "words": [], "none": []}
    for _ in range(ADD_THROUGHPUT_ROUNDS):
        for kept in rates:
            db = folder / f"throughput-{kept}.db"
            for stale in db.parent.glob(db.name + "*"):
                stale.unlink()
            with Collection(db) as collection:
                collection.add(records(CHUNKS_PER_FILE, dim), model=f"synthetic-{dim}")
                dropped = {"both": (), "words": ("trigram",), "none": ("trigram", "words")}[kept]
                for trigger in (t for index in dropped for t in KEYWORD_TRIGGERS[index]):
                    collection._db.execute(f"DROP TRIGGER {trigger}")
                started = time.perf_counter()
                collection.add(records(rows, dim, first_file=1), model=f"synthetic-{dim}")
                rates[kept].append(rows / (time.perf_counter() - started))
            for path in db.parent.glob(db.name + "*"):
                path.unlink()
    return {f"add_rows_per_s_{kept}": round(float(np.median(rate))) for kept, rate in rates.items()}


def index_throughput(folder: Path, model: Path, files: int) -> dict:
    """Seconds for `Collection.index` of `files` text files with `model` (loaded once, outside the
    timing), with both keyword indexes and with neither (their triggers dropped before indexing),
    INDEX_ROUNDS rounds, alternated and each round in the other order; medians and minima (the
    embedding's run-to-run spread is far larger than the indexes' cost, so every run is kept too)."""
    from qwen3_gguf import Embedder

    source = folder / "index-source"
    source.mkdir(exist_ok=True)
    for i, text in enumerate(synthetic_texts()[:files]):
        (source / f"note{i:03d}.txt").write_text(f"{text} chunk-{i}\n")
    seconds = {"both": [], "none": []}
    chunks = None
    with Embedder(model) as embedder:
        embedder.encode(["warm up"])
        for round_ in range(INDEX_ROUNDS):
            for kept in sorted(seconds, reverse=round_ % 2 == 1):
                db = folder / f"index-{kept}.db"
                for stale in db.parent.glob(db.name + "*"):
                    stale.unlink()
                with Collection(db, embedder=embedder) as collection:
                    if kept == "none":
                        for trigger in (t for names in KEYWORD_TRIGGERS.values() for t in names):
                            collection._db.execute(f"DROP TRIGGER {trigger}")
                    started = time.perf_counter()
                    collection.index([str(source)])
                    seconds[kept].append(time.perf_counter() - started)
                    chunks = len(collection)
                for path in db.parent.glob(db.name + "*"):
                    path.unlink()
    both, none = (float(np.median(seconds[kept])) for kept in ("both", "none"))
    return {"model": model.name, "files": files, "chunks": chunks, "rounds": INDEX_ROUNDS,
            "seconds_with_keyword_indexes": round(both, 2), "seconds_without": round(none, 2),
            "slower_percent": round(100 * (both / none - 1), 2),
            "fastest_slower_percent": round(100 * (min(seconds["both"]) / min(seconds["none"]) - 1), 2),
            "runs": {kept: [round(t, 2) for t in times] for kept, times in seconds.items()},
            "load_average": round(os.getloadavg()[0], 1)}


def brute_force(db: Path, query_set: np.ndarray) -> list[list[tuple[str, int]]]:
    """Top 10 (path, chunk) per query by float64 dot products of the vectors stored in SQLite."""
    import sqlite3

    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    best = [[] for _ in query_set]
    cursor = connection.execute("SELECT c.id, d.path, c.chunk, c.vector FROM chunks c JOIN documents d "
                                "ON d.id = c.document_id")
    q64 = query_set.astype(np.float64)
    while rows := cursor.fetchmany(20_000):
        matrix = np.frombuffer(b"".join(r[3] for r in rows), dtype="<f4").reshape(len(rows), -1)
        scores = matrix.astype(np.float64) @ q64.T
        for j in range(len(query_set)):
            best[j].extend((-scores[i, j], rows[i][0], rows[i][1], rows[i][2]) for i in
                           np.argsort(-scores[:, j])[:TOP_K])
            best[j] = sorted(best[j])[:TOP_K]
    return [[(path, chunk) for _, _, path, chunk in hits] for hits in best]


def sqlite_scan(db: Path, n_queries: int) -> float:
    """Release 1's search: every vector read out of SQLite for each query (median ms)."""
    import sqlite3

    connection = sqlite3.connect(db)
    dim = int(connection.execute("SELECT value FROM collection WHERE key = 'dim'").fetchone()[0])
    times = []
    for query in queries(n_queries, dim):
        started = time.perf_counter()
        best = np.empty(0)
        cursor = connection.execute("SELECT id, vector FROM chunks")
        while rows := cursor.fetchmany(8192):
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
            best = np.sort(np.concatenate([best, vectors @ query]))[-TOP_K:]
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def memory() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": int(status["VmRSS"].split()[0]) // 1024, "peak_rss_mib": int(status["VmHWM"].split()[0]) // 1024}


# --- reporting -------------------------------------------------------------------------------------

COLUMNS = [("chunks", "chunks", "{:,}"), ("dim", "dim", "{}"), ("warm_ms_p50", "warm p50 ms", "{:.1f}"),
           ("warm_ms_p99", "warm p99 ms", "{:.1f}"), ("warm_cpu_ms_p50", "warm CPU ms p50", "{:.1f}"),
           ("cold_first_query_ms_p50", "cold open+query p50 ms", "{:.0f}"),
           ("cold_first_query_ms_p99", "cold p99 ms", "{:.0f}"), ("first_query_ms", "open+query (warm) ms", "{:.0f}"),
           ("first_query_after_matrix_file_lost_ms", "rebuild+query ms", "{:.0f}"),
           ("sqlite_scan_ms", "release-1 scan ms", "{:.0f}"), ("exact_top10", "exact", "{}"),
           ("rss_mib", "RSS MiB", "{:,}"), ("db_bytes", "db GiB", "{:.2f}"), ("vectors_bytes", "matrix GiB", "{:.2f}"),
           ("add_one_file_s", "add 1 file s", "{:.1f}"), ("build_s", "build s", "{:.0f}"),
           ("load_average", "load avg", "{:.1f}"), ("cpu", "CPU", "{}")]
KEYWORD_COLUMNS = [("chunks", "chunks", "{:,}"), ("dim", "dim", "{}"), ("warm_ms_p50", "vector p50 ms", "{:.1f}")] + [
    (f"{mode}_{kind}_ms_{p}", f"{mode} {kind} {p} ms", "{:.1f}")
    for mode in ("keyword", "hybrid") for kind in ("rare", "mid", "common") for p in ("p50", "p99")] + [
    ("words_bytes", "word index GiB", "{:.2f}"), ("fts_bytes", "trigram index GiB", "{:.2f}"),
    ("add_rows_per_s_both", "add rows/s", "{:,}"), ("add_rows_per_s_words", "add rows/s, words only", "{:,}"),
    ("add_rows_per_s_none", "add rows/s, no keyword index", "{:,}"), ("load_average", "load avg", "{:.1f}")]


def cell(row: dict, key: str, fmt: str) -> str:
    if key not in row:
        return "–"
    value = row[key] / 2**30 if key.endswith("_bytes") else row[key]
    return fmt.format(value)


def format_row(row: dict) -> str:
    return "  ".join(f"{title}={cell(row, key, fmt)}" for key, title, fmt in COLUMNS + KEYWORD_COLUMNS[3:])


def table(rows: list[dict], columns: list[tuple] = COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row, key, fmt) for key, _, fmt in columns) + " |" for row in rows]
    return "\n".join(lines)


def keyword_table(rows: list[dict]) -> str:
    return table([row for row in rows if "keyword_mid_ms_p50" in row], KEYWORD_COLUMNS)


def write_json(path: Path, rows: list[dict], index_end_to_end: dict | None = None) -> None:
    ram_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**30
    machine = f"{platform.machine()} ({cpu_kind()}), {os.cpu_count()} cores, {ram_gib} GiB RAM"
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = {"machine": machine, "measured": measured, "top_k": TOP_K, "rows": rows}
    kept = json.loads(path.read_text()).get("index_end_to_end") if path.is_file() else None
    if index_end_to_end or kept:
        report["index_end_to_end"] = index_end_to_end or kept
    write_text_atomically(path, json.dumps(report, indent=1) + "\n")


def write_results_section(report: dict) -> None:
    """The "Store" section of results.md."""
    section = "\n".join([
        "## Store: exact search over synthetic collections (benchmarks/store.py)",
        "",
        f"{report['machine']}; measured {report['measured']}; rows this run did not measure are kept from "
        "earlier runs (each row's load average and CPU are in its last columns; rows without a CPU predate "
        "that column). Random unit vectors, ~1,500 characters of text "
        f"per chunk, top {report['top_k']} by `Collection.search(vector=...)`. Warm: p50/p99 over 50 queries "
        "in one process, and the CPU time (both cores) of the median query. Cold: opening the collection "
        "and answering one query after its files were dropped "
        "from the page cache (5 runs). Open+query (warm): the same with the page cache warm. Rebuild+query: "
        "the first query after the matrix file was deleted (rebuilt from SQLite). Release-1 scan: the "
        "previous release's search (every vector read out of SQLite per query). Exact: the top 10 of 5 "
        "queries equal a float64 brute-force scan of the vectors in SQLite. Add 1 file: `Collection.add` of "
        "10 chunks, including the update of the vector files (a delta file beside the matrix).",
        "",
        table(report["rows"]),
        "",
        "Keyword and hybrid search (rows measured since the word index, schema 3): p50/p99 over the warm "
        "queries of a rare term (one chunk's name), a mid-frequency term (in a quarter of the chunks) and two "
        "common words (in every chunk); hybrid is given the query's vector, so no model runs; vector p50 is "
        "the warm column above. Index sizes from SQLite's dbstat. Add rows/s: `Collection.add` of "
        f"{ADD_THROUGHPUT_ROWS:,} chunks (or the collection's size, if smaller) with both keyword indexes, with "
        f"the word index only and with neither (their triggers dropped), median of {ADD_THROUGHPUT_ROUNDS} "
        "alternated rounds.",
        "",
        keyword_table(report["rows"]),
    ])
    timed = report.get("index_end_to_end")
    if timed:
        section += (f"\n\n`index` end to end (`--index-model`): {timed['files']} files ({timed['chunks']} chunks) "
                    f"embedded with {timed['model']} and stored: {timed['seconds_with_keyword_indexes']} s with both "
                    f"keyword indexes, {timed['seconds_without']} s with neither (their triggers dropped), medians of "
                    f"{timed['rounds']} alternated rounds: {timed['slower_percent']:+.2f}% (fastest runs: "
                    f"{timed['fastest_slower_percent']:+.2f}%; every run: {timed['runs']}; load average "
                    f"{timed['load_average']}). The embedding's run-to-run spread is larger than the indexes' "
                    "cost; the add rows/s columns above measure that cost alone.")
    write_section("store", section)


if __name__ == "__main__":
    main()
