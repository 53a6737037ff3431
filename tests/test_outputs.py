"""Output files: JSONL, NPY + sidecar, Parquet; written under a temporary name, renamed at the end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from qwen3_gguf.cli import cli
from qwen3_gguf.embed import Embedder
from qwen3_gguf.files import Chunk
from qwen3_gguf.files.outputs import open_output, sidecar_path


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(6):
        (folder / f"doc{i}.txt").write_text(f"Document number {i} talks about topic {i * 7}.")
    return folder


def chunks_and_vectors(first: int, n: int, dim: int = 4):
    chunks = [Chunk(f"f{i}.txt", 0, 0, 5, "hello", 1) for i in range(first, first + n)]
    return chunks, np.arange(first * dim, (first + n) * dim, dtype=np.float32).reshape(n, dim) / 7


def test_npy_streams_rows_and_fills_in_the_header(tmp_path):
    out = tmp_path / "v.npy"
    with open_output(out, "npy") as writer:
        writer.write(*chunks_and_vectors(0, 3))
        writer.write(*chunks_and_vectors(3, 3))
    matrix = np.load(out)
    assert matrix.dtype == np.float32 and matrix.shape == (6, 4)
    np.testing.assert_array_equal(matrix, np.arange(24, dtype=np.float32).reshape(6, 4) / 7)
    rows = [json.loads(line) for line in sidecar_path(out).read_text().splitlines()]
    assert [r["path"] for r in rows] == [f"f{i}.txt" for i in range(6)]
    assert rows[0] == {"id": "f0.txt#0", "path": "f0.txt", "chunk": 0, "start": 0, "end": 5, "dim": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.jsonl", "v.npy"]


def test_a_failed_run_keeps_the_previous_file_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "v.jsonl"
    out.write_text("previous\n")
    with pytest.raises(KeyboardInterrupt):
        with open_output(out, "jsonl") as writer:
            writer.write(*chunks_and_vectors(0, 2))
            raise KeyboardInterrupt
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["v.jsonl"]


def test_ctrl_c_in_embed_files_leaves_the_previous_output(corpus, tmp_path, embedding_gguf_64, monkeypatch):
    monkeypatch.setattr("qwen3_gguf.files.embedding.BATCH_CHUNKS", 2)
    calls = []
    original = Embedder.encode

    def interrupted_encode(self, texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "encode", interrupted_encode)
    for fmt, name in (("jsonl", "v.jsonl"), ("npy", "m.npy")):
        out = tmp_path / name
        if fmt == "jsonl":
            out.write_text("previous\n")
        calls.clear()
        result = run("embed", "--files", "-m", embedding_gguf_64, "--format", fmt, "-o", out, corpus)
        assert result.exit_code == 130
        assert "Interrupted; nothing partial was left behind." in result.stderr
        assert calls == [2, 2]
    assert (tmp_path / "v.jsonl").read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "v.jsonl"]


def test_npy_and_jsonl_files_agree_with_encode(corpus, tmp_path, embedding_gguf_64, embedder_64):
    npy = run("embed", "--files", "-m", embedding_gguf_64, "--format", "npy", "-o", tmp_path / "m.npy", corpus)
    assert npy.exit_code == 0, npy.output
    jsonl = run("embed", "--files", "-m", embedding_gguf_64, "-o", tmp_path / "r.jsonl", corpus)
    assert jsonl.exit_code == 0, jsonl.output
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    sidecar = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "vector"} for r in records] == sidecar
    texts = [open(r["path"]).read()[r["start"]:r["end"]] for r in sidecar]
    expected = embedder_64.encode(texts)
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), expected, atol=1e-6)
    np.testing.assert_allclose([r["vector"] for r in records], expected, atol=1e-6)


def test_parquet_without_pyarrow_is_a_clear_error(corpus, tmp_path, embedding_gguf_64, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)   # as if it were not installed
    result = run("embed", "--files", "-m", embedding_gguf_64, "--format", "parquet", "-o", tmp_path / "v.parquet",
                 corpus)
    assert result.exit_code == 2
    assert result.stderr == ("Error: --format parquet needs pyarrow, which is not installed (pip install pyarrow); "
                             "or use --format jsonl or npy\n")
    assert not (tmp_path / "v.parquet").exists()


def test_parquet_agrees_with_jsonl_and_encode(corpus, tmp_path, embedding_gguf_64, embedder_64):
    """pyarrow is in the test extra: the Parquet writer runs end to end in every test run."""
    import pyarrow.parquet as pq

    parquet = run("embed", "--files", "-m", embedding_gguf_64, "--format", "parquet", "-o", tmp_path / "v.parquet",
                  corpus)
    assert parquet.exit_code == 0, parquet.output
    jsonl = run("embed", "--files", "-m", embedding_gguf_64, "-o", tmp_path / "r.jsonl", corpus)
    assert jsonl.exit_code == 0, jsonl.output
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.schema.field("vector").type.value_type == "float"
    rows = table.to_pylist()
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == len(records) == 6
    assert [{k: v for k, v in r.items() if k != "vector"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "vector"} for r in records]
    texts = [open(r["path"]).read()[r["start"]:r["end"]] for r in rows]
    np.testing.assert_allclose([r["vector"] for r in rows], embedder_64.encode(texts), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "r.jsonl", "v.parquet"]


def test_file_formats_need_an_output_path(corpus, embedding_gguf_64):
    result = run("embed", "--files", "-m", embedding_gguf_64, "--format", "npy", corpus)
    assert result.exit_code == 2 and result.stderr == "Error: --format npy writes a file: give it with -o\n"
