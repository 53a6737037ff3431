"""`qwen3-gguf index` as real processes: killed with SIGKILL at several points, two at once, a search
while one runs, a write limit reached mid-run (as a full disk), a read-only database."""

from __future__ import annotations

import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from qwen3_gguf.files.keywords import index_matches_chunks
from qwen3_gguf.files.store import Collection
from qwen3_gguf.files.vectors import VectorFile, brute_force, delta_path, matrix_path

WORDS = "river stone cloud lantern copper meadow signal harbor violet engine orbit timber".split()
FILES = 24
# The index command with a smaller batch (BATCH_CHUNKS), so that a run commits many times, held
# (if asked) at a point the test names until the test releases it (stdin) or kills it:
#   committed:N  right after the commit that brings the collection to N files;
#   writing:N    inside the transaction that writes this run's N-th file, its row written.
# The process prints "held" on stdout (the index command prints only on stderr) when it holds.
INDEX = """
import sys
import qwen3_gguf.files.embedding as embedding
from qwen3_gguf.cli import cli
from qwen3_gguf.files.store import Collection

embedding.BATCH_CHUNKS = int(sys.argv.pop(1))
where, files = sys.argv.pop(1).split(":")
files, written = int(files), []

def hold():
    print("held", flush=True)
    sys.stdin.readline()

store, replace_document = Collection._store, Collection._replace_document

def store_then_hold(self, batch):
    store(self, batch)
    if where == "committed" and self.document_count == files:
        hold()

def replace_document_then_hold(self, *args):
    document_id = replace_document(self, *args)
    written.append(document_id)
    if where == "writing" and len(written) == files:
        hold()
    return document_id

Collection._store, Collection._replace_document = store_then_hold, replace_document_then_hold
cli(prog_name="qwen3-gguf")
"""
DEADLINE_S = 120


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(FILES):            # 1 to 4 chunks of 16 tokens each
        words = rng.choice(WORDS, size=int(rng.integers(8, 40)))
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}. " + " ".join(words))
    return folder


def start_index(db, corpus, model, *extra, batch: int = 1, hold: str = "never:0", **popen) -> subprocess.Popen:
    args = [sys.executable, "-c", INDEX, str(batch), hold, "index", str(corpus), "--db", str(db), "-m", str(model),
            "--chunk-tokens", "16", "--device", "cpu", *extra]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def wait_until_held(process: subprocess.Popen) -> None:
    if process.stdout.readline() != "held\n":
        raise AssertionError(f"the index ended without holding: {finish(process)}")


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Release a held process (stdin closes) and wait for it."""
    _, stderr = process.communicate(timeout=DEADLINE_S)
    return process.returncode, stderr


def embedded_files(stderr: str) -> int:
    return int(re.search(r"indexed (\d+) new or changed files", stderr).group(1))


def committed_documents(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as connection:
            return connection.execute("SELECT count(*) FROM documents").fetchone()[0]
    except sqlite3.OperationalError:       # not created yet
        return 0


def chunks_by_path(db) -> dict[str, list[tuple]]:
    """path → [(chunk, start, end, text, vector)] of every stored document."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT d.path, c.chunk, c.char_start, c.char_end, c.text, c.vector FROM chunks c "
                                  "JOIN documents d ON d.id = c.document_id ORDER BY d.path, c.chunk").fetchall()
    stored: dict[str, list[tuple]] = {}
    for path, *chunk in rows:
        stored.setdefault(path, []).append(tuple(chunk))
    return stored


def assert_consistent(db, reference: dict[str, list[tuple]]) -> None:
    """Integrity, every stored file complete, the matrix file agreeing with the table, search exact."""
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert index_matches_chunks(connection)      # the keyword index holds exactly the chunks' text
        rows = dict(connection.execute("SELECT id, vector FROM chunks"))
        (instance,) = connection.execute("SELECT value FROM collection WHERE key = 'instance'").fetchone()
    for path, chunks in chunks_by_path(db).items():
        expected = reference[path]
        assert [c[:4] for c in chunks] == [c[:4] for c in expected], path
        for (*_, vector), (*_, expected_vector) in zip(chunks, expected):
            cosine = np.frombuffer(vector, dtype="<f4") @ np.frombuffer(expected_vector, dtype="<f4")
            assert cosine > 0.999       # llama.cpp's numbers move ~1e-4 with what shares a decode
    for path in (matrix_path(db), delta_path(db)):
        file = VectorFile.open(path, bytes.fromhex(instance))
        for chunk_id, vector in zip(np.asarray(file.ids).tolist(), file.matrix) if file is not None else ():
            assert chunk_id not in rows or rows[chunk_id] == vector.tobytes()
    if rows:
        ids = np.array(sorted(rows))
        matrix = np.stack([np.frombuffer(rows[i], dtype="<f4") for i in ids])
        query = matrix[len(matrix) // 2] + matrix[0]
        with Collection(db, create=False) as collection:
            hits = collection.search(vector=query, k=5)
        expected_ids = brute_force(matrix, ids, query / np.linalg.norm(query), 5).ids
        texts = {i: t for i, t in sqlite3.connect(db).execute("SELECT id, text FROM chunks")}
        assert [h.text for h in hits] == [texts[i] for i in expected_ids.tolist()]


@pytest.fixture
def reference(tmp_path, corpus, embedding_gguf_64) -> dict[str, list[tuple]]:
    code, stderr = finish(start_index(tmp_path / "reference.db", corpus, embedding_gguf_64, batch=32))
    assert code == 0, stderr
    return chunks_by_path(tmp_path / "reference.db")


def test_kill_9_at_several_points_then_the_next_run_embeds_only_what_is_missing(tmp_path, corpus, embedding_gguf_64,
                                                                                 reference):
    db = tmp_path / "v.db"
    for kill_at in (1, FILES // 2, FILES):     # files committed when the kill lands; the last before the vectors
        process = start_index(db, corpus, embedding_gguf_64, hold=f"committed:{kill_at}")
        wait_until_held(process)
        process.kill()
        process.wait(DEADLINE_S)
        assert process.returncode == -signal.SIGKILL
        assert committed_documents(db) == kill_at
        assert_consistent(db, reference)
    code, stderr = finish(start_index(db, corpus, embedding_gguf_64))
    assert code == 0, stderr
    assert embedded_files(stderr) == 0
    assert_consistent(db, reference)
    assert sorted(chunks_by_path(db)) == sorted(reference)
    before = chunks_by_path(db)
    (corpus / "doc03.txt").write_text("Document 3, changed.")
    killed = start_index(db, corpus, embedding_gguf_64, hold="writing:1")   # mid-transaction: rolled back
    wait_until_held(killed)
    killed.kill()
    killed.wait(DEADLINE_S)
    assert chunks_by_path(db) == before
    assert_consistent(db, reference)
    code, stderr = finish(start_index(db, corpus, embedding_gguf_64))
    assert code == 0 and embedded_files(stderr) == 1, stderr
    assert [chunk[3] for chunk in chunks_by_path(db)[str(corpus / "doc03.txt")]] == ["Document 3, changed."]


def test_two_index_runs_at_once_never_embed_a_file_twice(tmp_path, corpus, embedding_gguf_64, reference):
    db = tmp_path / "v.db"
    first = start_index(db, corpus, embedding_gguf_64, hold="committed:1")
    wait_until_held(first)                      # writing, one file committed
    second = start_index(db, corpus, embedding_gguf_64)
    waiting = f"another process is writing {db}; waiting for it to finish\n"
    for line in second.stderr:                  # the second has met the first's lock
        if line == waiting:
            break
    else:
        raise AssertionError(f"the second run never waited: {finish(second)}")
    (code1, stderr1), (code2, stderr2) = finish(first), finish(second)
    assert code1 == code2 == 0, stderr1 + stderr2
    assert (embedded_files(stderr1), embedded_files(stderr2)) == (FILES, 0)
    assert_consistent(db, reference)
    assert sorted(chunks_by_path(db)) == sorted(reference)


def test_search_while_an_index_writes_reads_the_committed_state(tmp_path, corpus, embedding_gguf_64, reference):
    db = tmp_path / "v.db"
    process = start_index(db, corpus, embedding_gguf_64, hold="writing:2")
    wait_until_held(process)                    # doc00 committed, doc01 written in an open transaction
    query = np.frombuffer(reference[str(corpus / "doc00.txt")][0][4], dtype="<f4")
    with Collection(db, create=False) as collection:
        hits = collection.search(vector=query, k=3)      # no "database is locked"
        assert collection.document_count == 1
    assert {hit.path for hit in hits} == {str(corpus / "doc00.txt")}
    code, stderr = finish(process)
    assert code == 0, stderr
    assert_consistent(db, reference)


def test_a_write_limit_reached_mid_run_is_a_clear_error_with_nothing_half_written(tmp_path, corpus,
                                                                                   embedding_gguf_64, reference):
    db = tmp_path / "v.db"

    def limit_file_size():          # as a full disk: writes past 128 KiB fail (EFBIG instead of a signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, 128 * 1024))

    code, stderr = finish(start_index(db, corpus, embedding_gguf_64, preexec_fn=limit_file_size))
    assert code == 2, stderr
    assert re.fullmatch(rf"Error: cannot write {re.escape(str(db))}\S*: .*\n", stderr.splitlines(True)[-1]), stderr
    assert "Traceback" not in stderr
    assert_consistent(db, reference)
    before = committed_documents(db)
    assert before < FILES
    code, stderr = finish(start_index(db, corpus, embedding_gguf_64))
    assert code == 0 and embedded_files(stderr) == FILES - before, stderr
    assert_consistent(db, reference)


def test_a_read_only_database_is_refused_before_any_work(tmp_path, corpus, embedding_gguf_64, reference):
    db = tmp_path / "v.db"
    (corpus / "doc00.txt").unlink()
    code, stderr = finish(start_index(db, corpus, embedding_gguf_64))
    assert code == 0, stderr
    (corpus / "doc00.txt").write_text("a new file")
    before = chunks_by_path(db)
    as_root = os.geteuid() == 0         # root writes through permissions: make the file immutable instead
    subprocess.run(["chattr", "+i", str(db)], check=True) if as_root else db.chmod(0o444)
    try:
        code, stderr = finish(start_index(db, corpus, embedding_gguf_64))
        assert code == 2 and stderr == f"Error: cannot write {db}: the file is read-only\n"
        with Collection(db, create=False) as collection:
            assert collection.search(vector=np.frombuffer(before[str(corpus / "doc01.txt")][0][4], dtype="<f4"))
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True) if as_root else db.chmod(0o644)
    assert chunks_by_path(db) == before
