"""Keyword and hybrid search, and `get`: BM25 over the FTS5 index, reciprocal rank fusion with the
exact vector ranking, CJK words, FTS5 syntax typed as text, the index kept equal to the chunks, and
stored text read back by path, chunk or glob."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from qwen3_gguf.cli import cli
from qwen3_gguf.errors import UserError
from qwen3_gguf.files import keywords, store
from qwen3_gguf.files.fusion import Fusion, fuse
from qwen3_gguf.files.keywords import index_matches_chunks
from qwen3_gguf.files.store import SCHEMA_VERSION, Collection

DIM = 32
# Source files as a user's tree holds them; one defines `repack_overrides`, the others only talk
# about repacking and overrides, so the words are everywhere but the identifier in one file.
SOURCES = {
    "runtime/amx.py": "def repack_overrides(patterns):\n    return [(p, 'CPU_REPACK') for p in patterns]\n",
    "runtime/model.py": "class Model:\n    def load(self, path):\n        self.tensors = read(path)  # repack later\n",
    "runtime/context.py": "def decode(batch):\n    # overrides of the KV cache types come from precision\n"
                          "    return llama_decode(batch)\n",
    "quantization/plan.py": "def plan(model, recipe):\n    overrides = recipe.rules(model)\n    return overrides\n",
    "quantization/types.py": "TYPES = ['Q4_K_M', 'Q5_K_M', 'Q8_0']\n# repack kernels exist for Q4_0 and IQ4_NL\n",
    "convert/writer.py": "def write(tensors, out):\n    for name, data in tensors:\n        out.write(data)\n",
    "files/walk.py": "def walk(paths):\n    for path in paths:\n        yield from sorted(path.rglob('*'))\n",
    "files/chunking.py": "def chunks(text, size):\n    return [text[i:i + size] for i in range(0, len(text), size)]\n",
    "cli/store.py": "def search(query, k):\n    return collection.search(query, k=k)\n",
    "server/app.py": "def route(request):\n    return handlers[request.path](request)\n",
}
CJK = {
    "zh.txt": "模型量化可以把权重文件缩小很多，推理速度也会提高。",
    "ja.txt": "東京都の図書館で新しい辞書を借りました。",
    "en.txt": "Quantization shrinks the weight files of a model.",
}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_tree(folder, files: dict[str, str]):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def add_texts(collection: Collection, folder, texts: list[str], seed: int = 0) -> None:
    """Chunks of the given texts with random vectors (no model): one file per text."""
    vectors = np.random.default_rng(seed).standard_normal((len(texts), DIM)).astype(np.float32)
    collection.add([{"path": str(folder / f"t{i:03d}.txt"), "chunk": 0, "start": 0, "end": len(text), "text": text,
                     "vector": vector} for i, (text, vector) in enumerate(zip(texts, vectors))], model="test-model")


def assert_index_equals_chunks(db) -> None:
    with sqlite3.connect(db) as connection:
        assert index_matches_chunks(connection)
        chunks = connection.execute("SELECT id, text FROM chunks").fetchall()
        for chunk_id, text in chunks[:50]:             # each chunk is found by its own text, as a phrase
            phrase = '"' + text.replace('"', '""') + '"'
            for index in ("chunks_words", "chunks_fts"):
                assert (chunk_id,) in connection.execute(f"SELECT rowid FROM {index} WHERE {index} MATCH ?",
                                                         (phrase,)).fetchall()


# --- fusion, with the test model -----------------------------------------------------------------


@pytest.fixture
def source_tree(tmp_path, embedder_64):
    tree = write_tree(tmp_path / "src", SOURCES)
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        collection.index([str(tree)], chunk_tokens=64)
        yield tree, collection


def test_an_exact_identifier_is_first_in_hybrid_even_when_the_vectors_rank_it_low(source_tree):
    tree, collection = source_tree
    target = str(tree / "runtime" / "amx.py")
    by_vector = [hit.path for hit in collection.search("repack_overrides", k=len(SOURCES), mode="vector")]
    assert by_vector.index(target) >= 2          # what the fixture is for: the model ranks it third or lower
    hybrid = collection.search("repack_overrides", k=3)
    assert hybrid[0].path == target
    assert (hybrid[0].keyword_rank, hybrid[0].vector_rank) == (1, by_vector.index(target) + 1)
    assert hybrid[0].fused == pytest.approx(1.1 / 61 + 1 / (61 + by_vector.index(target)))
    keyword = collection.search("repack_overrides", k=3, mode="keyword")
    assert [hit.path for hit in keyword] == [target] and keyword[0].cosine is None


def test_a_stored_passage_as_query_stays_in_the_hybrid_top_k(tmp_path, embedder_64):
    passage = "copper lantern beside the harbor"
    # Four files open with the passage's words eight times over, so BM25 ranks the passage itself
    # fifth, and go on about something else (the vectors, pooled at the last token, rank them apart);
    # the rest of the notes share no word with it.
    repeats = ["copper lantern beside the harbor, " * 8 + ending for ending in
               ("Rivers carry silt to the sea.", "Stones are weathered by frost.", "Clouds are made of droplets.",
                "Meadows bloom in spring.")]
    unrelated = ["Bananas are rich in potassium.", "Rust has a borrow checker.", "Whales are mammals.",
                 "Tea is brewed from leaves.", "Volcanoes erupt lava.", "GGUF files store tensors.",
                 "Quantization shrinks model weights.", "Penguins cannot fly.", "Jupiter is a gas giant.",
                 "Bread rises with yeast.", "Chess has sixty-four squares.", "Glaciers carve valleys."]
    tree = write_tree(tmp_path / "notes", {"passage.txt": passage,
                                           **{f"repeat{i}.txt": text for i, text in enumerate(repeats)},
                                           **{f"note{i}.txt": text for i, text in enumerate(unrelated)}})
    k = 3
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        collection.index([str(tree)])
        by_keyword = [hit.path for hit in collection.search(passage, k=20, mode="keyword")]
        assert by_keyword.index(str(tree / "passage.txt")) >= k          # keywords alone lose it
        hits = collection.search(passage, k=k, use_instruction=False)
    found = [hit for hit in hits if hit.path == str(tree / "passage.txt")]
    assert found and found[0].vector_rank == 1 and found[0].cosine == pytest.approx(1.0, abs=1e-5)


def test_cjk_text_is_found_by_a_word_in_it(tmp_path, embedder_64):
    tree = write_tree(tmp_path / "notes", CJK)
    with Collection(tmp_path / "v.db", embedder=embedder_64) as collection:
        collection.index([str(tree)])
        for word, name in [("量化", "zh.txt"), ("权重文件", "zh.txt"), ("図書館", "ja.txt"), ("辞書", "ja.txt"),
                           ("東京都", "ja.txt"), ("quantization", "en.txt")]:
            for mode in ("keyword", "hybrid"):
                assert collection.search(word, k=1, mode=mode)[0].path == str(tree / name), (word, mode)
        assert collection.search("推理速度", k=3, mode="keyword")[0].text == CJK["zh.txt"]


def test_rerank_scores_the_fused_candidates(source_tree, reranker_tied):
    _, collection = source_tree
    candidates = collection.search("repack overrides", k=4)
    hits = collection.search("repack overrides", k=2, reranker=reranker_tied, rerank_top=4)
    expected = reranker_tied.rank("repack overrides", [c.text for c in candidates], top_k=2,
                                  instruction=collection.instruction)
    assert [h.text for h in hits] == [e.text for e in expected]
    assert [h.score for h in hits] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert all(h.fused is not None for h in hits)


def test_cli_modes_json_and_files(source_tree):
    tree, collection = source_tree
    db = collection.path
    hybrid = run("search", "repack_overrides", "--db", db, "--json", "-k", 3)
    assert hybrid.exit_code == 0, hybrid.output
    records = [json.loads(line) for line in hybrid.stdout.splitlines()]
    assert set(records[0]) == {"path", "chunk", "start", "end", "score", "cosine", "bm25", "keyword_rank",
                               "vector_rank", "fused", "text"}
    assert records[0]["path"] == str(tree / "runtime" / "amx.py") and records[0]["keyword_rank"] == 1
    assert records[0]["score"] == records[0]["fused"] and records[0]["bm25"] > 0
    assert all(r["bm25"] is None and r["keyword_rank"] is None for r in records[1:])
    keyword = run("search", "repack", "--db", db, "--mode", "keyword", "--files")
    assert keyword.exit_code == 0, keyword.output
    assert sorted(keyword.stdout.split()) == sorted(str(tree / name) for name in
                                                    ["runtime/amx.py", "runtime/model.py", "quantization/types.py"])
    weighted = run("search", "repack_overrides", "--db", db, "--json", "--keyword-weight", 0, "-k", 20)
    by_vector = run("search", "repack_overrides", "--db", db, "--json", "--mode", "vector", "-k", 20)
    assert [json.loads(line)["path"] for line in weighted.stdout.splitlines()] == \
        [json.loads(line)["path"] for line in by_vector.stdout.splitlines()]


# --- the keyword index, without a model ----------------------------------------------------------


@pytest.fixture
def texts_collection(tmp_path):
    texts = ["river stone cloud", "lantern copper meadow", "signal harbor violet", "engine orbit timber",
             'He said "NEAR(a b)" - then: stop*', "river river river stone"]
    with Collection(tmp_path / "v.db") as collection:
        add_texts(collection, tmp_path, texts)
        yield collection


RIVER = {"river stone cloud", "river river river stone"}


@pytest.mark.parametrize(("query", "expected"), [
    ('"', set()), ('river"', RIVER), ('"river', RIVER), ("-river", RIVER), ("river*", RIVER), ("(river", RIVER),
    ("river)", RIVER), ("^river", RIVER), ("{river}", RIVER), ("'river'", RIVER), ("river:stone", RIVER),
    ("river AND", RIVER), ("OR river", RIVER), ("river NOT cloud", RIVER),
    ("NEAR(river stone)", RIVER | {'He said "NEAR(a b)" - then: stop*'}),
    ("then: stop*", {'He said "NEAR(a b)" - then: stop*'}),
])
def test_fts5_syntax_is_searched_as_text(texts_collection, query, expected):
    assert {hit.text for hit in texts_collection.search(query, mode="keyword")} == expected


def test_keyword_ranking_is_bm25_and_quoted_text_matches_literally(texts_collection):
    hits = texts_collection.search("river", mode="keyword")
    assert [h.text for h in hits] == ["river river river stone", "river stone cloud"]
    assert hits[0].bm25 > hits[1].bm25 > 0 and [h.keyword_rank for h in hits] == [1, 2]
    assert [h.text for h in texts_collection.search('"NEAR(a b)"', mode="keyword")] == \
        ['He said "NEAR(a b)" - then: stop*']


def test_terms_in_half_the_chunks_or_more_weigh_nothing(tmp_path):
    texts = ["the river", "the stone river", "the cloud the the the", "a lantern by the water", "class EmbeddingCache"]
    with Collection(tmp_path / "v.db") as collection:
        add_texts(collection, tmp_path, texts)      # "the" in 4 of 5 chunks, "river" in 2, "lantern" in 1
        hits = collection.search("the", mode="keyword")
        assert [h.text for h in hits] == texts[:4] and [h.bm25 for h in hits] == [0, 0, 0, 0]   # oldest first
        hits = collection.search("the river lantern", mode="keyword")
        assert [h.text for h in hits] == ["a lantern by the water", "the river", "the stone river",
                                          "the cloud the the the"]
        with sqlite3.connect(collection.path) as connection:    # the informative terms: FTS5's own BM25
            expected = [score for (score,) in connection.execute(
                "SELECT -bm25(chunks_words) FROM chunks_words WHERE chunks_words MATCH ? ORDER BY rank",
                ['"river" OR "lantern"'])]
        assert [h.bm25 for h in hits] == pytest.approx(expected + [0]) and expected[-1] > 0
        hybrid = collection.search("the", vector=np.ones(DIM), mode="hybrid", k=5)
        assert len(hybrid) == 5 and all(h.keyword_rank is None for h in hybrid)   # ties at 0 are not fused
        assert collection.search("river", mode="keyword")[0].bm25 > 0
        add_texts(collection, tmp_path / "more", ["river delta"])        # now in 3 of 6: exactly half
        assert [(h.text, h.bm25) for h in collection.search("river", mode="keyword")] == \
            [("the river", 0), ("the stone river", 0), ("river delta", 0)]


def test_a_path_glob_keeps_the_keyword_ranking_of_the_files_it_matches(tmp_path):
    texts = ["the river", "the stone river", "river river river", "the cloud", "a lantern by the water", "the end"]
    with Collection(tmp_path / "v.db") as collection:
        add_texts(collection, tmp_path / "a", texts[:3])
        add_texts(collection, tmp_path / "b", texts[3:])
        for query in ("river lantern", "the"):     # BM25-ranked terms; a weightless term (in 5 of 6 chunks)
            everywhere = collection.search(query, mode="keyword", k=10)
            under_b = collection.search(query, mode="keyword", k=10, path_glob=str(tmp_path / "b" / "*"))
            assert under_b and [(h.path, h.bm25) for h in under_b] == \
                [(h.path, h.bm25) for h in everywhere if "/b/" in h.path]


def test_hybrid_is_the_same_whether_keywords_are_ranked_in_a_second_thread_or_not(tmp_path, monkeypatch):
    texts = ["river stone cloud", "lantern copper meadow", "river river river stone", "signal harbor violet",
             "engine orbit timber", "quiet forest path"]       # "river" and "stone" in 2 of 6: both weigh
    found = []
    for shared in (True, False):
        monkeypatch.setattr(store, "SHARED_CONNECTIONS", shared)
        with Collection(tmp_path / f"{shared}.db") as collection:
            add_texts(collection, tmp_path, texts)
            hits = collection.search("river stone", vector=np.ones(DIM), k=4)
        found.append([(h.text, h.keyword_rank, h.vector_rank, h.fused) for h in hits])
    assert found[0] == found[1] and sum(rank is not None for _, rank, _, _ in found[0]) == 2


def test_a_word_no_chunk_holds_whole_is_found_inside_longer_words(texts_collection, tmp_path):
    add_texts(texts_collection, tmp_path / "more", ["class EmbeddingCache keeps vectors"])
    assert [h.text for h in texts_collection.search("embedding", mode="keyword")] == \
        ["class EmbeddingCache keeps vectors"]
    assert [h.text for h in texts_collection.search("embeddingcache", mode="keyword")] == \
        ["class EmbeddingCache keeps vectors"]


def test_empty_query_and_modes_that_need_text(texts_collection):
    for query in ("", "   \n"):
        with pytest.raises(UserError, match="^the query is empty$"):
            texts_collection.search(query, mode="keyword")
    with pytest.raises(UserError, match="^keyword search needs the query text, not only its vector$"):
        texts_collection.search(vector=np.ones(DIM), mode="keyword")
    with pytest.raises(UserError, match="^unknown search mode 'fuzzy'; choose one of hybrid, vector, keyword$"):
        texts_collection.search("river", mode="fuzzy")
    with pytest.raises(UserError, match="weights must be 0 or more, and not both 0"):
        Fusion(keyword_weight=0, vector_weight=0)


def test_cli_empty_query_is_exit_2_one_line(texts_collection):
    result = run("search", "", "--db", texts_collection.path, "--mode", "keyword")
    assert (result.exit_code, result.stderr) == (2, "Error: the query is empty\n")


def test_the_index_equals_the_chunks_after_index_reindex_and_prune(tmp_path, embedder_64):
    tree = write_tree(tmp_path / "notes", {**CJK, "more.txt": "Whales are mammals. " * 40})
    db = tmp_path / "v.db"
    with Collection(db, embedder=embedder_64) as collection:
        collection.index([str(tree)], chunk_tokens=16)
    assert_index_equals_chunks(db)
    (tree / "en.txt").write_text("Bananas are rich in potassium.")
    (tree / "ja.txt").unlink()
    with Collection(db, embedder=embedder_64) as collection:
        report = collection.index([str(tree)], chunk_tokens=16, prune=True)
        assert (report.embedded, report.pruned) == (1, 1)
        assert collection.search("potassium", mode="keyword")[0].path == str(tree / "en.txt")
        assert collection.search("quantization", mode="keyword") == []
        assert collection.search("図書館", mode="keyword") == []
    assert_index_equals_chunks(db)
    with sqlite3.connect(db) as connection:         # the check can fail: a chunk deleted behind the index
        connection.execute("DROP TRIGGER chunk_text_removed")
        connection.execute("DELETE FROM chunks WHERE id = (SELECT max(id) FROM chunks)")
        assert not index_matches_chunks(connection)


def test_a_version_1_collection_gets_its_keyword_index_on_open(tmp_path):
    db = tmp_path / "v1.db"
    texts = ["alpha beta gamma", "delta epsilon", "模型量化", "zeta eta theta alpha"]
    with Collection(tmp_path / "source.db") as source:
        add_texts(source, tmp_path, texts)
    with sqlite3.connect(db) as connection:         # the schema version 1 wrote, and the same rows
        for statement in store._statements(store.SCHEMA + store.GENERATION):
            connection.execute(statement)
        connection.execute(f"ATTACH '{tmp_path / 'source.db'}' AS source")
        for table in ("collection", "documents"):
            connection.execute(f"INSERT INTO {table} SELECT * FROM source.{table}")
        connection.execute("INSERT INTO chunks SELECT * FROM source.chunks")
        connection.commit()
        connection.execute("DETACH source")
        connection.execute("PRAGMA user_version = 1")
    with Collection(db) as collection:
        assert [h.text for h in collection.search("alpha", mode="keyword")] == ["alpha beta gamma",
                                                                                "zeta eta theta alpha"]
        assert [h.text for h in collection.search("量化", mode="keyword")] == ["模型量化"]
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert_index_equals_chunks(db)


def test_a_version_2_collection_gets_its_word_index_on_open(tmp_path):
    db = tmp_path / "v2.db"
    texts = ["alpha beta gamma", "delta epsilon", "模型量化", "zeta eta theta", "class EmbeddingCache"]
    with Collection(tmp_path / "source.db") as source:
        add_texts(source, tmp_path, texts)
    with sqlite3.connect(db) as connection:         # the schema version 2 wrote (trigram index only), same rows
        for statement in store._statements(store.SCHEMA + store.GENERATION + keywords.KEYWORD_INDEX):
            connection.execute(statement)
        connection.execute(f"ATTACH '{tmp_path / 'source.db'}' AS source")
        for table in ("collection", "documents", "chunks"):
            connection.execute(f"INSERT INTO {table} SELECT * FROM source.{table}")
        connection.commit()
        connection.execute("DETACH source")
        connection.execute("PRAGMA user_version = 2")
    with Collection(db) as collection:
        [alpha] = collection.search("alpha", mode="keyword")
        assert alpha.text == "alpha beta gamma" and alpha.bm25 > 0
        assert [h.text for h in collection.search("量化", mode="keyword")] == ["模型量化"]
        assert [h.text for h in collection.search("embedding", mode="keyword")] == ["class EmbeddingCache"]
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert connection.execute("SELECT rowid FROM chunks_words WHERE chunks_words MATCH 'zeta'").fetchall() == \
            [(4,)]
    assert_index_equals_chunks(db)


# --- fusion by itself ----------------------------------------------------------------------------


def test_fuse_is_reciprocal_rank_fusion_with_weights():
    fused = fuse(np.array([7, 3, 5]), np.array([3, 9]), Fusion(k=10, keyword_weight=2.0, vector_weight=1.0))
    expected = {7: 2 / 11, 3: 2 / 12 + 1 / 11, 5: 2 / 13, 9: 1 / 12}
    assert fused.ids.tolist() == sorted(expected, key=lambda i: -expected[i])
    assert fused.scores.tolist() == pytest.approx([expected[i] for i in fused.ids.tolist()])
    ranks = dict(zip(fused.ids.tolist(), zip(fused.keyword_ranks.tolist(), fused.vector_ranks.tolist())))
    assert ranks == {7: (1, 0), 3: (2, 1), 5: (3, 0), 9: (0, 2)}
    tie = fuse(np.array([4]), np.array([2]), Fusion(keyword_weight=1.0))    # equal scores: the older chunk first
    assert tie.ids.tolist() == [2, 4] and tie.scores[0] == tie.scores[1]


# --- get -----------------------------------------------------------------------------------------


def test_get_a_file_a_chunk_or_a_glob(tmp_path, embedder_64, monkeypatch):
    text = " ".join(f"Sentence number {i} is about whales and their songs." for i in range(30))
    tree = write_tree(tmp_path / "notes", {"long.md": text, "a/short.txt": "A short note.", "b/other.txt": "Other."})
    db = tmp_path / "v.db"
    with Collection(db, embedder=embedder_64) as collection:
        collection.index([str(tree)], chunk_tokens=32)
        [whole] = collection.get(str(tree / "long.md"))
        assert (whole.text, whole.start, whole.end, whole.chunk) == (text, 0, len(text), None)
        hit = collection.search("whales", k=1, mode="keyword")[0]
        [chunk] = collection.get(hit.id)
        assert (chunk.chunk, chunk.text, text[chunk.start:chunk.end]) == (hit.chunk, hit.text, hit.text)
        assert [p.path for p in collection.get("*.txt")] == [str(tree / "a/short.txt"), str(tree / "b/other.txt")]
    monkeypatch.chdir(tmp_path)
    printed = run("get", "notes/a/short.txt", "notes/long.md#1", "--db", db)
    assert printed.exit_code == 0, printed.output
    with Collection(db) as collection:
        second = collection.get(str(tree / "long.md") + "#1")[0]
    assert printed.stdout == (f"==> notes/a/short.txt [0:13] <==\nA short note.\n"
                              f"==> notes/long.md#1 [{second.start}:{second.end}] <==\n{second.text}\n")
    as_json = run("get", "notes/b/*", "--db", db, "--json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"path": str(tree / "b/other.txt"), "chunk": None, "start": 0, "end": 6, "text": "Other."}]


@pytest.mark.parametrize("name", ["notes/missing.txt", "notes/long.md#99", "notes/long.md#x", "*.pdf"])
def test_get_of_what_is_not_in_the_collection_is_exit_2_one_line(texts_collection, name):
    result = run("get", name, "--db", texts_collection.path)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {name} is not in the collection {texts_collection.path}\n"
