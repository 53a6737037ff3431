"""The Ray engine: ids, the actor's batch function, sinks and resuming, and whole jobs on a local Ray.

Tests marked `ray` share one local Ray started once per session (Ray takes 7–16 s to start
here); the rest call the same pieces without Ray.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from click.testing import CliRunner  # noqa: E402

from qwen3_gguf.cli import cli  # noqa: E402
from qwen3_gguf.distributed import (  # noqa: E402
    ChunkEmbedder,
    LanceCollection,
    ModelIdentity,
    chunk_id,
    embed_into,
    open_sink,
    output_schema,
    read_files,
    read_table,
)
from qwen3_gguf.distributed.identity import contains, id_set, text_source  # noqa: E402
from qwen3_gguf.errors import UserError  # noqa: E402

CHUNK_TOKENS = 64     # small, so that a few hundred words make several chunks
WORDS = ("river music data model search the of and to in is was for on that with as by at from city "
         "school world state people light water energy history market language network memory paper").split()


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def fake_rows(identity: ModelIdentity, n: int, start: int = 0):
    """Rows in the sinks' schema with random unit vectors (for sink tests that need no model)."""
    rng = np.random.default_rng(start)
    vectors = rng.standard_normal((n, identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    paths = [f"/docs/{i}.txt" for i in range(start, start + n)]
    return pa.table([
        pa.array([chunk_id(p, 0, identity.fingerprint) for p in paths]), pa.array(paths),
        pa.array([0] * n, pa.int64()), pa.array([0] * n, pa.int64()), pa.array([5] * n, pa.int64()),
        pa.array([identity.dim] * n, pa.int64()), pa.array([identity.key] * n), pa.array([3] * n, pa.int64()),
        pa.array([f"text {i}" for i in range(start, start + n)]),
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), identity.dim),
    ], schema=output_schema(identity.dim))


# --- ids and the anti-join (no model, no Ray) -----------------------------------------------------


def test_chunk_ids_are_deterministic_and_tell_source_chunk_and_model_apart():
    one = chunk_id("/docs/a.txt", 0, "sha:1024")
    assert one == chunk_id("/docs/a.txt", 0, "sha:1024") and len(one) == 32
    others = {chunk_id("/docs/b.txt", 0, "sha:1024"), chunk_id("/docs/a.txt", 1, "sha:1024"),
              chunk_id("/docs/a.txt", 0, "sha:512"), chunk_id("/docs/a.txt", 0, "other:1024")}
    assert one not in others and len(others) == 4
    assert text_source("same text") == text_source("same text") != text_source("same text.")


def test_anti_join_finds_exactly_the_ids_already_written():
    written = [chunk_id(f"/d/{i}", 0, "m") for i in range(1000)]
    later = [chunk_id(f"/d/{i}", 0, "m") for i in range(900, 1100)]
    present = contains(id_set(written), later)
    assert present.tolist() == [True] * 100 + [False] * 100
    assert not contains(id_set([]), later).any()
    assert contains(id_set(written), []).shape == (0,)


# --- model identity, sinks (a GGUF header and hash, no model loaded, no Ray) ----------------------


@pytest.fixture(scope="module")
def identity(embedding_gguf_256) -> ModelIdentity:
    return ModelIdentity.of(embedding_gguf_256)


def test_model_identity_hashes_the_file_and_keeps_the_dim_in_the_fingerprint(embedding_gguf_256, identity):
    assert identity.dim == identity.embedding_length == 256
    assert len(identity.sha256) == 64 and identity.sha256[:12] in identity.key
    smaller = ModelIdentity.of(embedding_gguf_256, 64)
    assert smaller.key == identity.key and smaller.fingerprint != identity.fingerprint
    with pytest.raises(UserError, match="--dim 16 is outside 32…256"):
        ModelIdentity.of(embedding_gguf_256, 16)


def test_parquet_sink_partitions_by_model_resumes_and_refuses_another_dim(tmp_path, embedding_gguf_256,
                                                                          embedding_gguf_64, identity):
    sink = open_sink(tmp_path / "out", identity, rows_per_write=10)
    for start, n in ((0, 10), (10, 4), (14, 6), (20, 5)):
        sink.write(fake_rows(identity, n, start))
    sink.flush()
    files = sorted((tmp_path / "out" / f"model={identity.key}").glob("part-*.parquet"))
    assert sink.rows_written == 25 and len(files) == 3       # 10, then 4 + 6 when they filled, 5 at the flush
    reopened = open_sink(tmp_path / "out", identity, rows_per_write=10)
    assert len(reopened.existing_ids()) == 25
    reopened.write(fake_rows(identity, 10))                  # a retried write of the same rows: same file name
    reopened.flush()
    assert sorted((tmp_path / "out" / f"model={identity.key}").glob("part-*.parquet")) == files
    assert pq.read_schema(files[0]).metadata[b"dim"] == b"256"

    with pytest.raises(UserError, match="holds 256-dimensional vectors .* this run makes 64-dimensional"):
        open_sink(tmp_path / "out", ModelIdentity.of(embedding_gguf_256, 64))
    other = ModelIdentity.of(embedding_gguf_64)               # another model gets its own partition
    assert len(open_sink(tmp_path / "out", other).existing_ids()) == 0
    with pytest.raises(UserError, match="is a file"):
        open_sink(files[0], identity)


def test_lance_sink_upserts_refuses_another_model_and_is_searchable(tmp_path, embedding_gguf_64, identity):
    pytest.importorskip("lancedb")
    target = f"lance://{tmp_path / 'db'}"
    for _ in range(2):                                       # the same rows twice: upserted, not duplicated
        sink = open_sink(target, identity, rows_per_write=7)
        sink.write(fake_rows(identity, 20))
        sink.flush()
    collection = LanceCollection(target)
    assert len(collection) == 20
    assert len(open_sink(target, identity).existing_ids()) == 20
    rows = fake_rows(identity, 20)
    vector = np.array(rows.column("vector")[13].as_py())
    hits = collection.search(vector=vector, k=3)
    assert hits[0].path == "/docs/13.txt" and hits[0].text == "text 13" and hits[0].cosine == pytest.approx(1, abs=1e-5)
    assert hits[0].score >= hits[1].score >= hits[2].score
    under = collection.search(vector=vector, k=20, path_glob="1?.txt")
    assert sorted(h.path for h in under) == [f"/docs/{i}.txt" for i in range(10, 20)]
    assert [h.path for h in collection.search(vector=vector, k=20, min_score=0.99)] == ["/docs/13.txt"]
    with pytest.raises(UserError, match="holds 256-dimensional vectors of .*this run makes 64-dimensional"):
        open_sink(target, ModelIdentity.of(embedding_gguf_64))
    with pytest.raises(UserError, match="no LanceDB table"):
        LanceCollection(f"lance://{tmp_path / 'nothing'}")


def test_missing_ray_extra_names_the_install_command(monkeypatch, tmp_path, embedding_gguf_256):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'qwen3-gguf\[ray\]'"):
        read_files([str(tmp_path)])
    result = run_cli("embed-files", tmp_path, "--engine", "ray", "-m", embedding_gguf_256, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "pip install 'qwen3-gguf[ray]'" in result.output
    assert not (tmp_path / "out").exists()


def test_unreachable_address_is_refused_before_anything_is_written(tmp_path, embedding_gguf_256):
    (tmp_path / "a.txt").write_text("some text")
    with socket.socket() as s:                               # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        result = run_cli("embed-files", tmp_path / "a.txt", "--engine", "ray", "--address", address,
                         "-m", embedding_gguf_256, "-o", tmp_path / "out")
        assert result.exit_code == 2, result.output
        assert f"cannot reach a Ray cluster at --address {address}" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_ray_options_are_refused_with_the_local_engine(tmp_path, embedding_gguf_256):
    (tmp_path / "a.txt").write_text("some text")
    result = run_cli("embed-files", tmp_path / "a.txt", "-m", embedding_gguf_256, "--workers", "2")
    assert result.exit_code == 2 and "--workers applies only with --engine ray" in result.output
    result = run_cli("embed-files", tmp_path / "a.txt", "-m", embedding_gguf_256, "--format", "lance", "-o", "x")
    assert result.exit_code == 2 and "--format lance needs --engine ray" in result.output


# --- the actor's batch function, called directly (a model, no Ray) --------------------------------


@pytest.mark.slow
def test_actor_call_chunks_embeds_and_skips_like_embed_files(embedding_gguf_256, identity):
    from qwen3_gguf import Embedder
    from qwen3_gguf.files import Chunker, Document

    long_text = " ".join(random.Random(1).choice(WORDS) for _ in range(300))
    batch = pa.table({"path": ["/d/long.txt", "/d/empty.txt", "/d/none.txt", "/d/short.txt"],
                      "text": [long_text, "  \n", None, "<|im_start|> a short one"]})
    options = dict(model=str(embedding_gguf_256), model_key=identity.key, fingerprint=identity.fingerprint,
                   dim=identity.dim, id_column="path", chunk_tokens=CHUNK_TOKENS, overlap=None, max_tokens=8192,
                   threads=2, gpu=False)
    worker = ChunkEmbedder(**options)
    rows = worker(batch)
    assert rows.schema.field("vector").type == pa.list_(pa.float32(), 256)

    with Embedder(embedding_gguf_256, device="cpu") as embedder:
        chunker = Chunker(embedder, CHUNK_TOKENS)
        expected = [c for path, text in [("/d/long.txt", long_text), ("/d/short.txt", "<|im_start|> a short one")]
                    for c in chunker.split(Document(path, text, "", 0.0, len(text)))[0]]
        reference = embedder.encode([c.text for c in expected])
    assert len(expected) > 3
    assert rows.column("path").to_pylist() == [c.path for c in expected]
    assert rows.column("chunk").to_pylist() == [c.index for c in expected]
    assert rows.column("start").to_pylist() == [c.start for c in expected]
    assert rows.column("end").to_pylist() == [c.end for c in expected]
    assert rows.column("n_tokens").to_pylist() == [c.n_tokens for c in expected]
    assert rows.column("text").to_pylist() == [long_text[c.start:c.end] if c.path.endswith("long.txt") else c.text
                                               for c in expected]
    assert rows.column("id").to_pylist() == [chunk_id(c.path, c.index, identity.fingerprint) for c in expected]
    vectors = np.array(rows.column("vector").to_pylist(), dtype=np.float32)
    assert cosines(vectors, reference).min() >= 0.99999

    skipped = ChunkEmbedder(**options, skip_ids=id_set(rows.column("id").to_pylist()[:3]))(batch)
    assert skipped.column("id").to_pylist() == rows.column("id").to_pylist()[3:]
    assert np.array_equal(np.array(skipped.column("vector").to_pylist()), vectors[3:])

    unnamed = ChunkEmbedder(**{**options, "id_column": None})(batch.select(["text"]))
    assert set(unnamed.column("path").to_pylist()) == {text_source(long_text), text_source("<|im_start|> a short one")}


# --- whole jobs on one local Ray --------------------------------------------------------------------


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """210 text files in nested folders (short, long enough to chunk, non-ASCII), 6 binary, 6 empty, 1 hidden."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(210):
        folder = root / f"part{i % 7}" / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        n_words = rng.choice([3, 20, 60, 120, 250])
        text = " ".join(rng.choice(WORDS) for _ in range(n_words))
        if i % 25 == 0:
            text = "Ünïcode — ★ " + text + "\n\n日本語のテキスト。"
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    for i in range(6):
        (root / f"part{i}" / f"blob{i}.bin").write_bytes(bytes([0, 1, 2, 3]) * 50)
        (root / f"part{i}" / f"empty{i}.txt").write_text("" if i % 2 else "  \n\t")
    (root / ".hidden.txt").write_text("not walked")
    return root


@pytest.fixture(scope="module")
def embed_files_rows(corpus, embedding_gguf_256, tmp_path_factory):
    """What the in-process `embed-files` writes for the corpus (Parquet), and its summary line."""
    out = tmp_path_factory.mktemp("local") / "local.parquet"
    result = run_cli("embed-files", corpus, "-m", embedding_gguf_256, "--chunk-tokens", CHUNK_TOKENS,
                     "--format", "parquet", "-o", out)
    assert result.exit_code == 0, result.output
    return pq.read_table(out), result.output


def expected_ids(embed_files_rows, identity) -> list[str]:
    table, _ = embed_files_rows
    return sorted(chunk_id(os.path.abspath(p), c, identity.fingerprint)
                  for p, c in zip(table.column("path").to_pylist(), table.column("chunk").to_pylist()))


def read_partition(folder: Path, identity: ModelIdentity):
    return pq.read_table(folder / f"model={identity.key}")


@pytest.mark.ray
@pytest.mark.slow
def test_corpus_on_ray_matches_embed_files_row_for_row(local_ray, corpus, embedding_gguf_256, identity,
                                                       embed_files_rows, tmp_path):
    from qwen3_gguf import Embedder
    from qwen3_gguf.files import Counts

    counts = Counts()
    report = embed_into(read_files([str(corpus)], counts=counts), open_sink(tmp_path / "out", identity),
                        counts=counts, id_column="path", chunk_tokens=CHUNK_TOKENS, workers=2, batch_size=8)
    rows = read_partition(tmp_path / "out", identity)
    local, local_summary = embed_files_rows

    def keyed(table):
        return {(os.path.abspath(p), c): (s, e) for p, c, s, e in zip(*(table.column(k).to_pylist()
                                                                      for k in ("path", "chunk", "start", "end")))}

    assert keyed(rows) == keyed(local)
    assert sorted(rows.column("id").to_pylist()) == expected_ids(embed_files_rows, identity)
    assert rows.num_rows == local.num_rows > 210 and report.rows_written == rows.num_rows
    assert (counts.files, counts.binary, counts.empty) == (210, 6, 6)
    assert f"{counts.files} files, {rows.num_rows} chunks, {counts.tokens} tokens" in local_summary
    assert "skipped 6 binary, 6 empty" in report.summary()

    texts = rows.column("text").to_pylist()
    for path, start, end, text in zip(rows.column("path").to_pylist(), rows.column("start").to_pylist(),
                                      rows.column("end").to_pylist(), texts):
        assert Path(path).read_text(encoding="utf-8")[start:end] == text
    with Embedder(embedding_gguf_256, device="cpu") as embedder:
        reference = embedder.encode(texts)
    assert cosines(np.array(rows.column("vector").to_pylist(), dtype=np.float32), reference).min() >= 0.99999


def kill_once_worker(marker: Path, sentinel: str) -> type:
    """A ChunkEmbedder whose process dies (os._exit) on the batch holding `sentinel`, the first time only."""

    class KillOnce(ChunkEmbedder):
        def __call__(self, batch):
            if sentinel in batch.column("path").to_pylist() and not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    return KillOnce


@pytest.mark.ray
@pytest.mark.slow
def test_killed_actor_and_interrupted_job_leave_every_id_exactly_once(local_ray, corpus, identity,
                                                                      embed_files_rows, tmp_path):
    expected = expected_ids(embed_files_rows, identity)
    options = dict(id_column="path", chunk_tokens=CHUNK_TOKENS, workers=2, batch_size=8)

    marker = tmp_path / "killed"
    sentinel = os.path.abspath(corpus / "part3" / "doc101.txt")
    report = embed_into(read_files([str(corpus)]), open_sink(tmp_path / "killed-run", identity),
                        worker=kill_once_worker(marker, sentinel), **options)
    assert marker.exists()                                   # an actor did die mid-job
    ids = read_partition(tmp_path / "killed-run", identity).column("id").to_pylist()
    assert sorted(ids) == expected and report.rows_written == len(expected)

    def interrupt(report):
        if report.rows_written:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_into(read_files([str(corpus)]), open_sink(tmp_path / "resumed", identity, rows_per_write=40),
                   progress=interrupt, **options)
    first = read_partition(tmp_path / "resumed", identity).num_rows
    assert 0 < first < len(expected)
    again = embed_into(read_files([str(corpus)]), open_sink(tmp_path / "resumed", identity), **options)
    assert (again.rows_present, again.rows_written) == (first, len(expected) - first)
    assert sorted(read_partition(tmp_path / "resumed", identity).column("id").to_pylist()) == expected


@pytest.mark.ray
@pytest.mark.slow
def test_cli_lance_twice_without_duplicates_then_search(local_ray, corpus, embedding_gguf_256, identity,
                                                        embed_files_rows, tmp_path):
    target = f"lance://{tmp_path / 'vectors.lance'}"
    command = ["embed-files", corpus, "--engine", "ray", "-m", embedding_gguf_256, "--chunk-tokens", CHUNK_TOKENS,
               "--workers", 2, "--cpus-per-worker", 1, "-o", target]
    first = run_cli(*command)
    assert first.exit_code == 0, first.output
    n = len(expected_ids(embed_files_rows, identity))
    assert f"wrote {n} rows, 0 already present" in first.output
    assert "embedded 210 files" in first.output and "skipped 6 binary, 6 empty" in first.output
    second = run_cli(*command)
    assert second.exit_code == 0, second.output
    assert "embedded 210 files, 0 chunks, 0 tokens" in second.output
    assert f"wrote 0 rows, {n} already present" in second.output
    collection = LanceCollection(target)
    ids = collection.table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == n and sorted(ids) == expected_ids(embed_files_rows, identity)

    found = run_cli("search", "river music", "--db", target, "-k", 3, "--json")
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.splitlines() if line.startswith("{")]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert all(Path(h["path"]).read_text(encoding="utf-8")[h["start"]:h["end"]] == h["text"] for h in hits)

    other = run_cli("embed-files", corpus, "--engine", "ray", "-m", embedding_gguf_256, "--dim", 64, "-o", target)
    assert other.exit_code == 2 and "holds 256-dimensional vectors" in other.output
    with socket.socket() as s:                               # refused before any cluster is reached
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
    other = run_cli("embed-files", corpus, "--engine", "ray", "--address", nowhere, "-m", embedding_gguf_256,
                    "--dim", 64, "-o", target)
    assert other.exit_code == 2 and "holds 256-dimensional vectors" in other.output, other.output


@pytest.mark.ray
@pytest.mark.slow
def test_jsonl_table_with_an_id_column(local_ray, embedding_gguf_256, identity, tmp_path):
    records = [{"doc": f"row-{i}", "body": " ".join(random.Random(i).choice(WORDS) for _ in range(10 + 40 * (i % 3)))}
               for i in range(30)] + [{"doc": "row-empty", "body": ""}]
    source = tmp_path / "table.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UserError, match="has no column 'text'"):
        read_table([str(source)])
    out = tmp_path / "out"
    report = embed_into(read_table([str(source)], text_column="body", id_column="doc"), open_sink(out, identity),
                        text_column="body", id_column="doc", chunk_tokens=CHUNK_TOKENS)
    rows = read_partition(out, identity)
    assert set(rows.column("path").to_pylist()) == {f"row-{i}" for i in range(30)}
    assert report.rows_written == rows.num_rows > 30
    keys = zip(rows.column("path").to_pylist(), rows.column("chunk").to_pylist())
    assert set(rows.column("id").to_pylist()) == {chunk_id(p, c, identity.fingerprint) for p, c in keys}
