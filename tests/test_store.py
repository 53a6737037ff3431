"""The SQLite collection: incremental index, resume after interruption, prune, search, rerank."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from qwen3_gguf.cli import cli
from qwen3_gguf.embed import Embedder
from qwen3_gguf.errors import UserError
from qwen3_gguf.files.store import Collection

TOPICS = ["GGUF files store tensors and metadata.", "Bananas are rich in potassium.",
          "The Eiffel Tower is in Paris.", "Rust has a borrow checker.", "Whales are mammals.",
          "Quantization shrinks model weights.", "Tea is brewed from leaves.", "Volcanoes erupt lava."]
JSON_FIELDS = {"path", "chunk", "start", "end", "score", "cosine", "bm25", "keyword_rank", "vector_rank", "fused",
               "text"}


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i, text in enumerate(TOPICS):
        (folder / ("sub" if i % 2 else "") / f"topic{i}.txt").write_text(text)
    (folder / "binary.bin").write_bytes(b"\0\1\2")
    return folder


def stored(db) -> list[tuple]:
    """(path, chunk, start, end, text, vector) of every chunk, in a stable order."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT d.path, c.chunk, c.char_start, c.char_end, c.text, c.vector FROM chunks c "
                                  "JOIN documents d ON d.id = c.document_id ORDER BY d.path, c.chunk").fetchall()
    return rows


class EncodeSpy:
    """Counts the texts Embedder.encode is given; can fail on a chosen call."""

    def __init__(self, monkeypatch, fail_on_call: int | None = None):
        self.texts: list[str] = []
        self.calls = 0
        original = Embedder.encode

        def encode(embedder, texts, **kwargs):
            self.calls += 1
            if self.calls == fail_on_call:
                raise RuntimeError("simulated failure")
            if not isinstance(texts, str):
                self.texts.extend(texts)
            return original(embedder, texts, **kwargs)

        monkeypatch.setattr(Embedder, "encode", encode)


def test_index_stores_vectors_equal_to_encode(corpus, tmp_path, embedder_64):
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        report = collection.index([str(corpus)], chunk_tokens=16)
        assert (report.embedded, report.counts.binary, collection.document_count) == (8, 1, 8)
    rows = stored(tmp_path / "v.db")
    assert len(rows) == len(TOPICS)
    for path, chunk, start, end, text, _vector in rows:
        assert open(path).read()[start:end] == text and chunk == 0
    # One batch, as the index embedded them: llama.cpp's numbers depend (by ~1e-4) on what shares a decode.
    expected = embedder_64.encode([row[4] for row in rows])
    np.testing.assert_allclose([np.frombuffer(row[5], dtype="<f4") for row in rows], expected, atol=1e-6)


def test_reindex_embeds_only_the_changed_file_and_prunes(corpus, tmp_path, embedder_64, monkeypatch):
    db = tmp_path / "v.db"
    with Collection(db, embedder=embedder_64) as collection:
        collection.index([str(corpus)])
    before = {row[0]: row for row in stored(db)}
    changed = corpus / "topic2.txt"
    changed.write_text("The Eiffel Tower is in Paris, France. It was finished in 1889.")
    (corpus / "sub" / "topic3.txt").unlink()
    spy = EncodeSpy(monkeypatch)
    with Collection(db, embedder=embedder_64) as collection:
        report = collection.index([str(corpus)], prune=True)
    assert spy.texts == [changed.read_text()]
    assert (report.embedded, report.unchanged, report.pruned) == (1, 6, 1)
    after = {row[0]: row for row in stored(db)}
    assert set(before) - set(after) == {str(corpus / "sub" / "topic3.txt")}
    assert after[str(changed)][4] == changed.read_text()
    assert all(after[p] == before[p] for p in after if p != str(changed))


def test_a_file_that_turns_empty_or_binary_is_forgotten(corpus, tmp_path, embedder_64):
    db = tmp_path / "v.db"
    with Collection(db, embedder=embedder_64) as collection:
        collection.index([str(corpus)])
    (corpus / "topic0.txt").write_text("  \n")
    (corpus / "topic2.txt").write_bytes(b"now\0binary")
    with Collection(db, embedder=embedder_64) as collection:
        report = collection.index([str(corpus)])
        assert (report.embedded, report.pruned, collection.document_count) == (0, 2, 6)
    kept = {str(p) for p in corpus.rglob("topic*.txt")} - {str(corpus / "topic0.txt"), str(corpus / "topic2.txt")}
    assert {row[0] for row in stored(db)} == kept


def test_a_failed_first_index_leaves_no_database(corpus, tmp_path):
    result = run("index", corpus, "--db", tmp_path / "new.db", "-m", tmp_path / "missing.gguf")
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "new.db").exists()


def test_an_interrupted_index_resumes_without_loss_or_duplicates(corpus, tmp_path, embedder_64, monkeypatch):
    monkeypatch.setattr("qwen3_gguf.files.embedding.BATCH_CHUNKS", 3)
    with Collection(tmp_path / "whole.db", embedder=embedder_64) as collection:
        collection.index([str(corpus)])
    spy = EncodeSpy(monkeypatch, fail_on_call=2)
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        with pytest.raises(RuntimeError, match="simulated failure"):
            collection.index([str(corpus)])
        assert collection.document_count == 3        # the first batch was committed
    first_batch = list(spy.texts)
    spy.texts.clear()
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        report = collection.index([str(corpus)])
    assert (report.embedded, report.unchanged) == (5, 3)
    assert not set(spy.texts) & set(first_batch)
    assert stored(tmp_path / "v.db") == stored(tmp_path / "whole.db")


def test_search_finds_the_planted_document_first(corpus, tmp_path, embedder_64):
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        collection.index([str(corpus)])
        for i, text in enumerate(TOPICS):
            best = collection.search(text, k=3, use_instruction=False, mode="vector")[0]
            assert best.path.endswith(f"topic{i}.txt") and best.text == text
            assert best.score == pytest.approx(1.0, abs=1e-5)


def test_search_with_the_instruction_ranks_by_cosine(corpus, tmp_path, embedder_64):
    with Collection(tmp_path / "v.db", embedder=embedder_64, instruction="Find facts") as collection:
        collection.index([str(corpus)])
        hits = collection.search("Where is the tower?", k=5, mode="vector")
    query = embedder_64.encode("Where is the tower?", instruction="Find facts")
    cosines = embedder_64.encode(TOPICS) @ query
    assert [h.text for h in hits] == [TOPICS[i] for i in np.argsort(-cosines)[:5]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(cosines)[::-1][:5], atol=1e-5)


def test_rerank_reorders_the_cosine_candidates(corpus, tmp_path, embedder_64, reranker_tied):
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        collection.index([str(corpus)])
        candidates = collection.search("Is tea a drink?", k=4, mode="vector")
        hits = collection.search("Is tea a drink?", k=3, reranker=reranker_tied, rerank_top=4, mode="vector")
    expected = reranker_tied.rank("Is tea a drink?", [c.text for c in candidates], top_k=3,
                                  instruction=collection.instruction)
    assert [h.text for h in hits] == [e.text for e in expected]
    assert [h.score for h in hits] == pytest.approx([e.score for e in expected], abs=1e-6)


def test_a_collection_refuses_another_model_or_dim(corpus, tmp_path, embedder_64, embedding_gguf_256):
    with Collection(tmp_path / "v.db", embedder=embedder_64, dim=48) as collection:
        collection.index([str(corpus)])
        assert collection.dim == 48 and len(collection) == len(TOPICS)
    with pytest.raises(UserError, match="holds 48-dimensional vectors; --dim 64 does not match"):
        Collection(tmp_path / "v.db", dim=64)
    with Collection(tmp_path / "v.db", model=embedding_gguf_256, device="cpu") as collection:
        with pytest.raises(UserError, match=r"was built with .*64 dimensions\); the model given is .*256 dimensions"):
            collection.index([str(corpus)])


def test_cli_index_and_search(corpus, tmp_path, embedding_gguf_64, reranker_tied_gguf):
    db = tmp_path / "v.db"
    first = run("index", corpus, "--db", db, "-m", embedding_gguf_64, "--chunk-tokens", 64)
    assert first.exit_code == 0, first.output
    assert first.stderr.startswith("indexed 8 new or changed files (8 chunks, ")
    assert first.stderr.rstrip().endswith(f"0 unchanged, 0 pruned; skipped 1 binary; {db} holds 8 files, 8 chunks")
    again = run("index", corpus, "--db", db)            # the collection remembers its model
    assert again.exit_code == 0, again.output
    assert again.stderr.startswith("indexed 0 new or changed files (0 chunks, 0 tokens)")
    found = run("search", TOPICS[5], "--db", db, "-k", 2, "--no-instruction", "--mode", "vector")
    assert found.exit_code == 0, found.output
    lines = found.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[:3] == ["1", "1.0000", f"{corpus / 'sub' / 'topic5.txt'}#0"]
    reranked = run("search", "weights", "--db", db, "--json", "-k", 3, "--rerank-model", reranker_tied_gguf)
    assert reranked.exit_code == 0, reranked.output
    records = [json.loads(line) for line in reranked.stdout.splitlines()]
    assert len(records) == 3 and records[0]["score"] >= records[1]["score"] >= records[2]["score"]
    assert set(records[0]) == JSON_FIELDS


def test_cli_store_errors(corpus, tmp_path, embedding_gguf_64):
    missing = run("search", "q", "--db", tmp_path / "none.db")
    assert missing.exit_code == 2
    assert missing.stderr == (f"Error: no collection at {tmp_path / 'none.db'}; build one with: "
                              f"qwen3-gguf index PATH... --db {tmp_path / 'none.db'}\n")
    garbage = tmp_path / "garbage.db"
    garbage.write_text("this is not a database, just text long enough to look like a file header" * 10)
    result = run("search", "q", "--db", garbage)
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {garbage} is not a usable SQLite database")
    stdin = run("index", "-", "--db", tmp_path / "v.db", "-m", embedding_gguf_64)
    assert stdin.exit_code == 2 and "stdin (-) cannot be indexed" in stdin.stderr


def test_cli_import_of_embed_files_output_then_filtered_search(corpus, tmp_path, embedding_gguf_64,
                                                               embedding_gguf_256):
    db, records = tmp_path / "v.db", tmp_path / "out.parquet"
    embedded = run("embed-files", corpus, "-m", embedding_gguf_64, "--format", "parquet", "-o", records)
    assert embedded.exit_code == 0, embedded.output
    imported = run("index", "--import", records, "--db", db, "-m", embedding_gguf_64)
    assert imported.exit_code == 0, imported.output
    assert imported.stderr == (f"imported 8 chunks of 8 files from {records} (8 match the files on disk); "
                               f"{db} holds 8 files, 8 chunks\n")
    again = run("index", corpus, "--db", db)                 # the imported files count as indexed
    assert again.exit_code == 0 and again.stderr.startswith("indexed 0 new or changed files"), again.output
    found = run("search", TOPICS[5], "--db", db, "-k", 8, "--no-instruction", "--path-glob", "sub/*", "--json",
                "--mode", "vector")
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(hits) == 4 and all("/sub/" in h["path"] for h in hits)
    assert hits[0]["text"] == TOPICS[5] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert set(hits[0]) == JSON_FIELDS
    best = run("search", TOPICS[5], "--db", db, "--no-instruction", "--min-score", 0.999, "--mode", "vector")
    assert best.exit_code == 0 and len(best.stdout.splitlines()) == 1, best.output
    other = run("index", "--import", records, "--db", db, "-m", embedding_gguf_256)
    assert other.exit_code == 2
    assert other.stderr.startswith(f"Error: the records were embedded with {embedding_gguf_64.name} (GGUF sha256 ")
    assert f"the model given is {embedding_gguf_256} (sha256 " in other.stderr     # records name their model
    assert run("index", "--db", db).stderr == "Error: name the files or folders to index, or --import FILE\n"
