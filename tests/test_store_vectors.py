"""The collection without a model: exact search over the matrix file, staleness, import, schema migration,
writer lock. Vectors come in through `Collection.add`, so nothing here loads llama.cpp."""

from __future__ import annotations

import os
import sqlite3
import threading

import numpy as np
import pytest

from qwen3_gguf.errors import UserError
from qwen3_gguf.files import vectors as vector_files
from qwen3_gguf.files.chunking import Chunk
from qwen3_gguf.files.outputs import open_output
from qwen3_gguf.files.records import read_records
from qwen3_gguf.files.store import SCHEMA_VERSION, Collection
from qwen3_gguf.files.vectors import Snapshot, VectorFile, Vectors, brute_force, delta_path, matrix_path, nearest

DIM = 48


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def tricky_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Random unit vectors with exact duplicates and near ties (scores 1e-7 apart) among them."""
    rng = np.random.default_rng(seed + 1000)
    vectors = random_vectors(n, seed)
    vectors[10] = vectors[20] = vectors[30]
    for i in range(40, 45):
        vectors[i] = unit(vectors[30] + 1e-7 * (i - 39) * rng.standard_normal(DIM))
    return vectors


def make_records(vectors: np.ndarray, folder, chunks_per_file: int = 4, model: str | None = None) -> list[dict]:
    records = []
    for i, vector in enumerate(vectors):
        path = folder / f"file{i // chunks_per_file:04d}.txt"
        record = {"path": str(path), "chunk": i % chunks_per_file, "start": 0, "end": 5, "text": f"text {i}",
                  "vector": vector}
        if model:
            record["model"] = model
        records.append(record)
    return records


def stored_matrix(db) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Chunk ids, vectors and (path, chunk) as the database holds them."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT c.id, c.vector, d.path, c.chunk FROM chunks c "
                                  "JOIN documents d ON d.id = c.document_id ORDER BY c.id").fetchall()
    ids = np.array([r[0] for r in rows])
    matrix = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
    return ids, matrix, [(r[2], r[3]) for r in rows]


def expected_hits(db, query, k, where=None) -> list[tuple[str, int]]:
    ids, matrix, names = stored_matrix(db)
    keep = np.array([where is None or where(name) for name in names])
    best = brute_force(matrix[keep], ids[keep], unit(query), k)
    by_id = dict(zip(ids.tolist(), names))
    return [by_id[i] for i in best.ids.tolist()]


@pytest.fixture
def collection(tmp_path):
    with Collection(tmp_path / "v.db") as collection:
        collection.add(make_records(tricky_vectors(400), tmp_path), model="test-model")
        yield collection


# --- exact top k ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [48, 1024])
def test_nearest_equals_a_float64_brute_force_scan_with_ties(dim):
    rng = np.random.default_rng(dim)
    matrix = unit(rng.standard_normal((3000, dim)))
    matrix[5] = matrix[6] = matrix[7]                                  # exact ties: broken by id
    for i in range(8, 16):                                            # near ties, 1e-8…1e-7 apart
        matrix[i] = unit(matrix[7] + 3e-8 * i * rng.standard_normal(dim))
    ids = np.arange(3000) * 2 + 1
    rows = dict(zip(ids.tolist(), matrix))

    def fetch(wanted):
        return np.stack([rows[i] for i in wanted.tolist()])

    for query in [matrix[7], matrix[9], unit(rng.standard_normal(dim)), unit(matrix[7] + 0.01 * matrix[100])]:
        for k in (1, 3, 12, 40):
            got = nearest(query, k, Vectors(None), Snapshot(1, ids), fetch)
            want = brute_force(matrix, ids, query, k)
            assert got.ids.tolist() == want.ids.tolist()
            np.testing.assert_array_equal(got.scores, want.scores)


def test_search_by_vector_equals_brute_force_over_the_database(collection, tmp_path):
    vectors = tricky_vectors(400)
    for query in [vectors[30], vectors[42], vectors[7] + vectors[8], np.random.default_rng(3).standard_normal(DIM)]:
        hits = collection.search(vector=query, k=12)
        assert [(h.path, h.chunk) for h in hits] == expected_hits(tmp_path / "v.db", query, 12)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    texts = [h.text for h in collection.search(vector=vectors[30], k=8)]   # 3 equal vectors, 5 near ties
    first = texts.index("text 10")
    assert texts[first:first + 3] == ["text 10", "text 20", "text 30"]    # equal scores: in chunk id order
    assert set(texts) == {f"text {i}" for i in (10, 20, 30, 40, 41, 42, 43, 44)}


def test_path_glob_and_min_score(collection, tmp_path):
    query = tricky_vectors(400)[42]
    hits = collection.search(vector=query, k=5, path_glob="file00[0-4]?.txt")
    assert [(h.path, h.chunk) for h in hits] == expected_hits(
        tmp_path / "v.db", query, 5, where=lambda name: os.path.basename(name[0]) < "file0050.txt")
    assert collection.search(vector=query, k=5, path_glob=str(tmp_path / "file0001.txt"))[0].path.endswith("0001.txt")
    assert collection.search(vector=query, k=5, path_glob="*.md") == []
    everything = collection.search(vector=query, k=400)
    high = collection.search(vector=query, k=400, min_score=0.2)
    assert high == [h for h in everything if h.score >= 0.2] and 0 < len(high) < 400


def test_a_missing_stale_or_foreign_matrix_file_never_changes_results(collection, tmp_path):
    db, query = tmp_path / "v.db", tricky_vectors(400)[42]
    expected = collection.search(vector=query, k=10)
    matrix_path(db).unlink()                                      # missing: rebuilt by the next search
    assert collection.search(vector=query, k=10) == expected and matrix_path(db).is_file()
    with open(matrix_path(db), "r+b") as stream:                  # damaged: ignored and rebuilt
        stream.truncate(100)
    assert collection.search(vector=query, k=10) == expected
    assert VectorFile.open(matrix_path(db), bytes.fromhex(collection.metadata["instance"])) is not None

    stale = tmp_path / "stale.vectors"
    stale.write_bytes(matrix_path(db).read_bytes())
    more = make_records(unit(np.stack([query] * 2)), tmp_path / "more", model="test-model")
    collection.add(more)
    replacement = make_records(random_vectors(1, seed=9), tmp_path)[0]
    collection.add([{**replacement, "path": str(tmp_path / "file0003.txt")}])   # 4 chunks become 1
    os.replace(stale, matrix_path(db))                            # stale: rows added and deleted since
    delta_path(db).unlink()
    hits = collection.search(vector=query, k=10)
    assert [(h.path, h.chunk) for h in hits] == expected_hits(db, query, 10)
    assert str(tmp_path / "more" / "file0000.txt") in {h.path for h in hits}

    other = tmp_path / "other.db"                                 # another database's file: not used
    with Collection(other) as second:
        second.add(make_records(random_vectors(30, seed=5), tmp_path / "o"),
                   model="test-model")
        os.replace(matrix_path(db), matrix_path(other))
        assert [(h.path, h.chunk) for h in second.search(vector=query, k=5)] == expected_hits(other, query, 5)


def test_search_takes_a_text_or_a_vector_of_the_collections_dim(collection):
    with pytest.raises(UserError, match="the query vector has 47 dimensions; .* holds 48"):
        collection.search(vector=np.ones(47))
    with pytest.raises(UserError, match="a query text or a vector"):
        collection.search()
    with pytest.raises(UserError, match="not all zeros"):
        collection.search(vector=np.zeros(DIM))


# --- import --------------------------------------------------------------------------------------


def test_add_refuses_another_dim_or_model_and_an_unnamed_first_model(collection, tmp_path):
    with pytest.raises(UserError, match="holds 48-dimensional vectors; the records' have 32"):
        collection.add(make_records(unit(np.ones((1, 32))), tmp_path / "x"))
    with pytest.raises(UserError, match="holds vectors of test-model; the records are of other-model"):
        collection.add(make_records(unit(np.ones((1, DIM))), tmp_path / "x", model="other-model"))
    with Collection(tmp_path / "new.db") as new:
        with pytest.raises(UserError, match="do not say which model made them; name it with -m"):
            new.add(make_records(unit(np.ones((1, DIM))), tmp_path / "x"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_import_what_embed_files_writes(fmt, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = {"a.txt": "alpha beta gamma delta", "b.txt": "one two three"}
    chunks, rng = [], np.random.default_rng(1)
    for name, text in texts.items():
        (folder / name).write_text(text)
        chunks += [Chunk(str(folder / name), 0, 0, 10, text[:10], 3), Chunk(str(folder / name), 1, 6, len(text),
                                                                            text[6:], 3)]
    vectors = unit(rng.standard_normal((len(chunks), DIM)))
    output = tmp_path / f"out.{fmt}"
    with open_output(output, fmt) as writer:
        writer.write(chunks, vectors)
    written_at = output.stat().st_mtime
    os.utime(folder / "a.txt", (written_at - 10, written_at - 10))
    (folder / "b.txt").write_text("changed since it was embedded")
    os.utime(folder / "b.txt", (written_at + 10, written_at + 10))
    with Collection(tmp_path / "v.db") as collection:
        report = collection.add(read_records(output), model="test-model", written_at=written_at)
        assert (report.documents, report.chunks, report.verified) == (2, 4, 1)
        hits = collection.search(vector=vectors[1], k=1)
    assert (hits[0].path, hits[0].chunk, hits[0].text) == (str(folder / "a.txt"), 1, texts["a.txt"][6:])
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)
    with sqlite3.connect(tmp_path / "v.db") as connection:
        hashes = dict(connection.execute("SELECT path, sha256 FROM documents"))
    assert len(hashes[str(folder / "a.txt")]) == 64 and hashes[str(folder / "b.txt")] == ""  # b is re-embedded


def test_read_records_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a", "chunk": 0, "start": 0, "end": 1, "vector": [1.0]}\n{"path": "a"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: the record has no chunk, start, end, vector"):
        list(read_records(bad))
    (tmp_path / "v.csv").write_text("path,vector\n")
    with pytest.raises(UserError, match="reads .jsonl or .parquet"):
        list(read_records(tmp_path / "v.csv"))


# --- schema --------------------------------------------------------------------------------------

# The schema the first release wrote (user_version 0), verbatim.
RELEASE_1_SCHEMA = """
CREATE TABLE IF NOT EXISTS collection (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    mtime REAL NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    chunk INTEGER NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);
"""


def release_1_database(path, vectors: np.ndarray) -> None:
    with sqlite3.connect(path) as connection:
        connection.executescript(RELEASE_1_SCHEMA)
        connection.executemany("INSERT INTO collection VALUES (?, ?)", [
            ("model_name", "Qwen3 Embedding"), ("quant", "F16"), ("embedding_length", str(DIM)),
            ("model", "qwen3-embedding-0.6b"), ("dim", str(DIM)), ("instruction", "Find facts")])
        for i in range(len(vectors) // 2):
            connection.execute("INSERT INTO documents VALUES (?, ?, 1.0, 10, 'abc')", (i + 1, f"/docs/{i}.txt"))
        connection.executemany("INSERT INTO chunks VALUES (?, ?, ?, 0, 4, ?, ?)",
                               [(i + 1, i // 2 + 1, i % 2, f"text {i}", v.tobytes()) for i, v in enumerate(vectors)])
    os.chmod(path, 0o644)


def test_a_release_1_database_is_migrated_on_open(tmp_path):
    db, vectors = tmp_path / "old.db", tricky_vectors(60)
    release_1_database(db, vectors)
    before = stored_matrix(db)
    with Collection(db) as collection:
        assert (len(collection), collection.document_count, collection.dim) == (60, 30, DIM)
        assert collection.instruction == "Find facts"
        hits = collection.search(vector=vectors[42], k=5)
    assert [(h.path, h.chunk) for h in hits] == expected_hits(db, vectors[42], 5)
    after = stored_matrix(db)
    assert after[0].tolist() == before[0].tolist() and after[2] == before[2]
    np.testing.assert_array_equal(after[1], before[1])
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.execute("DELETE FROM chunks WHERE id = 60")
        connection.execute("INSERT INTO chunks (document_id, chunk, char_start, char_end, text, vector) "
                           "VALUES (30, 1, 0, 4, 'new', ?)", (vectors[0].tobytes(),))
        assert connection.execute("SELECT max(id) FROM chunks").fetchone()[0] == 61   # ids are not reused


def test_a_newer_schema_or_another_database_is_refused(tmp_path):
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as connection:
        connection.executescript(RELEASE_1_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION + 1};")
    with pytest.raises(UserError, match=f"written by a newer qwen3-gguf \\(collection schema {SCHEMA_VERSION + 1}"):
        Collection(newer)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(UserError, match="an SQLite database but not a qwen3-gguf collection"):
        Collection(foreign)


# --- one writer at a time ------------------------------------------------------------------------


def test_a_second_writer_waits_and_searches_read_the_committed_state(tmp_path):
    db = tmp_path / "v.db"
    first_batch = make_records(random_vectors(8), tmp_path / "a", model="test-model")
    second_batch = make_records(random_vectors(8, seed=1), tmp_path / "b", model="test-model")
    with Collection(db) as collection:
        collection.add(first_batch[:4])
    holding, release = threading.Event(), threading.Event()
    events = []

    def slow_records():
        yield from first_batch[4:]
        holding.set()
        assert release.wait(30)

    def writer(records, name):
        with Collection(db, on_wait=lambda message: events.append((name, message))) as collection:
            collection.add(records)
            events.append((name, "done"))

    first = threading.Thread(target=writer, args=(slow_records(), "first"))
    first.start()
    assert holding.wait(30)
    second = threading.Thread(target=writer, args=(second_batch, "second"))
    second.start()
    with Collection(db, create=False) as reader:                  # the first writer holds the lock
        hits = reader.search(vector=first_batch[0]["vector"], k=20)
    assert {h.text for h in hits} == {r["text"] for r in first_batch[:4]}
    second.join(0.5)
    assert second.is_alive() and events == [("second", f"another process is writing {db}; waiting for it to finish")]
    release.set()
    first.join(30)
    second.join(30)
    assert [name for name, message in events if message == "done"] == ["first", "second"]
    with Collection(db) as collection:
        assert len(collection) == 16


def test_changes_go_to_a_delta_file_until_they_are_many(tmp_path, monkeypatch):
    monkeypatch.setattr(vector_files, "DELTA_MIN_ROWS", 0)       # the 1/8 rule alone: 50 changes for 400 rows
    db, vectors = tmp_path / "v.db", tricky_vectors(400)
    with Collection(db) as collection:
        collection.add(make_records(vectors, tmp_path), model="test-model")
        matrix_written = matrix_path(db).stat().st_mtime_ns, matrix_path(db).stat().st_ino
        collection.add(make_records(random_vectors(8, seed=3), tmp_path / "new"))          # 8 added
        collection.add([{**make_records(random_vectors(1, seed=4), tmp_path)[0],           # 3 deleted, 1 added
                         "path": str(tmp_path / "file0005.txt")}])
        assert (matrix_path(db).stat().st_mtime_ns, matrix_path(db).stat().st_ino) == matrix_written
        assert delta_path(db).is_file()
        for query in (vectors[42], random_vectors(8, seed=3)[2], vectors[21]):
            hits = collection.search(vector=query, k=10)
            assert [(h.path, h.chunk) for h in hits] == expected_hits(db, query, 10)
        collection.add(make_records(random_vectors(60, seed=5), tmp_path / "more"))        # many: a new matrix
        assert (matrix_path(db).stat().st_mtime_ns, matrix_path(db).stat().st_ino) != matrix_written
        assert not delta_path(db).exists()
        query = random_vectors(60, seed=5)[7]
        assert [(h.path, h.chunk) for h in collection.search(vector=query, k=10)] == expected_hits(db, query, 10)
