"""Files in: the folder walk, token chunking with character offsets, and `embed --files`."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from hub_cache import offline_hub

from qwen3_gguf.cli import cli
from qwen3_gguf.errors import UserError
from qwen3_gguf.files import Chunker, Document, TextFiles

LONG_TEXT = "".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. Ünïcödé ✓ 深度学习.\n"
                    for i in range(12))


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def tree(tmp_path):
    """docs/ with nested folders, a binary, invalid UTF-8, an empty file, a long file, a symlink loop."""
    root = tmp_path / "docs"
    (root / "guide" / "deep").mkdir(parents=True)
    (root / "notes.md").write_text("Short notes about GGUF files.")
    (root / "guide" / "intro.md").write_text("An introduction to embeddings.")
    (root / "guide" / "deep" / "long.txt").write_text(LONG_TEXT)
    (root / "guide" / "deep" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("  \n\n")
    (root / ".hidden.md").write_text("hidden files are skipped in folder walks")
    (root / "guide" / "deep" / "loop").symlink_to(root, target_is_directory=True)
    return root


def decoded(path) -> str:
    return open(path, "rb").read().decode("utf-8", errors="replace")


# --- walking -------------------------------------------------------------------------------------


def test_walk_reads_text_files_and_counts_the_rest(tree):
    files = TextFiles([str(tree)])
    documents = {os.path.relpath(d.path, tree): d for d in files}
    assert sorted(documents) == ["guide/deep/latin1.txt", "guide/deep/long.txt", "guide/intro.md", "notes.md"]
    assert documents["guide/deep/latin1.txt"].text == "caf\ufffd cr\ufffdme"
    assert documents["notes.md"].size == len("Short notes about GGUF files.")
    c = files.counts
    assert (c.files, c.binary, c.empty, c.invalid_utf8, c.repeated_folders) == (4, 1, 2, 1, 1)


def test_glob_and_exclude(tree):
    only_md = TextFiles([str(tree)], include=["*.md"])
    assert sorted(os.path.basename(d.path) for d in only_md) == ["intro.md", "notes.md"]
    no_deep = TextFiles([str(tree)], exclude=["guide/deep"])
    assert sorted(os.path.basename(d.path) for d in no_deep) == ["intro.md", "notes.md"]


def test_named_files_and_stdin(tree, monkeypatch):
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(b"from stdin")))
    documents = list(TextFiles([str(tree / ".hidden.md"), "-"]))
    assert [d.path for d in documents] == [str(tree / ".hidden.md"), "-"]
    assert documents[1].text == "from stdin"


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(UserError, match=f"no such file or folder: {tmp_path / 'nope'}"):
        TextFiles([str(tmp_path / "nope")])


def test_ten_thousand_files_are_streamed(tmp_path, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(10_000):
        (folder / f"{i:05d}.txt").write_text(f"file {i}")
    reads = []
    original = TextFiles._read
    monkeypatch.setattr(TextFiles, "_read", lambda self, path: reads.append(path) or original(self, path))
    walk = iter(TextFiles([str(folder)]))
    first = next(walk)
    assert first.text == "file 0" and len(reads) == 1
    assert sum(1 for _ in walk) == 9_999


# --- chunking ------------------------------------------------------------------------------------

CHUNK_TEXTS = {
    "ascii": LONG_TEXT,
    "cjk and emoji": "深度学习是机器学习的一个分支。😀 " * 40,
    "decomposed (NFD)": "Cafe\u0301 noe\u0308l re\u0301sume\u0301 \u212b. " * 30 + "\u1100\u1161\u11a8 end",
    "control-token look-alikes": "<|im_start|>user hi<|im_end|> <|endoftext|> " * 25,
    "no whitespace": "x" * 1500,
}


@pytest.mark.parametrize("name", CHUNK_TEXTS)
def test_chunk_offsets_map_back_to_the_tokens(embedder_64, name):
    text = CHUNK_TEXTS[name]
    chunks, truncated = Chunker(embedder_64, 40, 5).split(Document("t", text, "", 0, 0))
    assert not truncated and len(chunks) > 2
    document_tokens = embedder_64.tokenize(text)[0][:-1]
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for i, chunk in enumerate(chunks):
        assert chunk.index == i and chunk.text == text[chunk.start:chunk.end]
        tokens = embedder_64.tokenize(text[chunk.start:chunk.end])[0][:-1]
        assert len(tokens) == chunk.n_tokens <= 40
        assert any(document_tokens[p:p + len(tokens)] == tokens for p in range(len(document_tokens)))
    for before, after in zip(chunks, chunks[1:]):
        assert before.start < after.start <= before.end   # contiguous or overlapping, always advancing
    if name == "ascii":
        assert all(text[c.start].isspace() for c in chunks[1:])  # cut at whitespace where possible
        assert any(after.start < before.end for before, after in zip(chunks, chunks[1:]))


def test_overlap_zero_tiles_the_text(embedder_64):
    chunks, _ = Chunker(embedder_64, 32, 0).split(Document("t", LONG_TEXT, "", 0, 0))
    assert "".join(c.text for c in chunks) == LONG_TEXT


def test_chunk_option_errors(embedder_64):
    with pytest.raises(UserError, match="--chunk-tokens 8192 is outside 1…8191"):
        Chunker(embedder_64, 8192)
    with pytest.raises(UserError, match="--overlap 40 must be at least 0 and less than --chunk-tokens 40"):
        Chunker(embedder_64, 40, 40)


# --- embed --files ------------------------------------------------------------------------------


def test_embed_files_jsonl_matches_encode(tree, embedding_gguf_64, embedder_64):
    result = run("embed", "--files", "-m", embedding_gguf_64, "--chunk-tokens", 32, tree)
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert {os.path.relpath(r["path"], tree) for r in records} == {
        "notes.md", "guide/intro.md", "guide/deep/long.txt", "guide/deep/latin1.txt"}
    long_chunks = [r for r in records if r["path"].endswith("long.txt")]
    assert len(long_chunks) > 3 and [r["chunk"] for r in long_chunks] == list(range(len(long_chunks)))
    assert all(r["id"] == f"{r['path']}#{r['chunk']}" and r["dim"] == 64 for r in records)
    texts = [decoded(r["path"])[r["start"]:r["end"]] for r in records]
    np.testing.assert_allclose([r["vector"] for r in records], embedder_64.encode(texts), atol=1e-6)
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"embedded 4 files, {len(records)} chunks, ")
    assert summary.endswith("skipped 1 binary, 2 empty; 1 with invalid UTF-8 (replaced); "
                            "1 folders reached twice through symlinks (skipped)")


def test_embed_files_without_chunking_truncates_and_counts(tree, embedding_gguf_64, embedder_64):
    long_file = tree / "guide" / "deep" / "long.txt"
    result = run("embed", "--files", "-m", embedding_gguf_64, "--chunk-tokens", 0, "--max-tokens", 24, long_file)
    assert result.exit_code == 0, result.output
    (record,) = jsonl(result.stdout)
    assert record["start"] == 0 and 0 < record["end"] < len(LONG_TEXT)
    assert len(embedder_64.tokenize(LONG_TEXT[:record["end"]])[0]) <= 24
    assert "; 1 truncated" in result.stderr
    refused = run("embed", "--files", "-m", embedding_gguf_64, "--chunk-tokens", 0, "--max-tokens", 24,
                  "--no-truncate", long_file)
    assert refused.exit_code == 2
    assert f"Error: {long_file} is longer than 24 tokens (truncation is off" in refused.stderr


def test_embed_files_as_queries_with_dim_from_stdin(embedding_gguf_64, embedder_64):
    result = run("embed", "--files", "-m", embedding_gguf_64, "--query", "--dim", 32, "-", input="a question")
    assert result.exit_code == 0, result.output
    (record,) = jsonl(result.stdout)
    assert record["path"] == "-" and record["dim"] == 32
    np.testing.assert_allclose(record["vector"], embedder_64.encode("a question", prompt_name="query", dim=32),
                               atol=1e-6)


def test_embed_files_bad_inputs(tree, tmp_path, embedding_gguf_64):
    missing = run("embed", "--files", "-m", embedding_gguf_64, tree, tmp_path / "nope")
    assert missing.exit_code == 2 and missing.stderr == f"Error: no such file or folder: {tmp_path / 'nope'}\n"
    nothing = run("embed", "--files", "-m", embedding_gguf_64, tree / "image.png", tree / "empty.txt")
    assert nothing.exit_code == 2
    assert nothing.stderr == "Error: nothing to embed: 0 files, 0 chunks, 0 tokens; skipped 1 binary, 1 empty\n"
    stray = run("embed", "-m", embedding_gguf_64, "--glob", "*.md", "-o", tmp_path / "x.jsonl", "text")
    assert stray.exit_code == 2 and re.search(r"No such option:? '?--glob", stray.stderr)  # it belongs to embed-files
    assert not (tmp_path / "x.jsonl").exists()


def test_embed_files_is_its_own_command_and_embed_files_its_alias(tree, tmp_path, embedding_gguf_64):
    by_name = run("embed-files", "-m", embedding_gguf_64, "--chunk-tokens", 32, "-o", tmp_path / "a.jsonl", tree)
    by_alias = run("embed", "--files", "-m", embedding_gguf_64, "--chunk-tokens", 32, "-o", tmp_path / "b.jsonl", tree)
    assert by_name.exit_code == by_alias.exit_code == 0, by_name.stderr + by_alias.stderr
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    listed = run("--help")
    assert "embed-files" in listed.stdout


def test_embed_files_in_a_process_with_the_default_model(tree, tmp_path, monkeypatch, embedding_gguf_64):
    hub = offline_hub(monkeypatch, tmp_path / "hf" / "hub")
    hub.add("Qwen/Qwen3-Embedding-0.6B-GGUF", "Qwen3-Embedding-0.6B-Q8_0.gguf", embedding_gguf_64)
    exe = shutil.which("qwen3-gguf", path=os.path.dirname(sys.executable)) or shutil.which("qwen3-gguf")
    out = tmp_path / "vectors.npy"
    done = subprocess.run([exe, "embed", "--files", str(tree), "--glob", "*.md", "--format", "npy", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("embedded 2 files, 2 chunks, ") and len(done.stderr.splitlines()) == 1
    matrix = np.load(out)
    rows = jsonl((tmp_path / "vectors.jsonl").read_text())
    assert matrix.shape == (2, 64) and [os.path.basename(r["path"]) for r in rows] == ["notes.md", "intro.md"]
