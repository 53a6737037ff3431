"""Search for agents and everyday use: records that carry their text and model, named collections,
`index --watch`, and the MCP server through the MCP SDK's own client (stdio and streamable HTTP)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mcp import Client, StdioServerParameters

from qwen3_gguf.cli import cli
from qwen3_gguf.files.store import Collection
from qwen3_gguf.files.watching import watch
from qwen3_gguf.gguf_file import file_sha256

TOPICS = ["GGUF files store tensors and metadata.", "Bananas are rich in potassium.",
          "The Eiffel Tower is in Paris.", "Rust has a borrow checker.", "Whales are mammals.",
          "Quantization shrinks model weights.", "Tea is brewed from leaves.", "Volcanoes erupt lava."]
REPO = Path(__file__).resolve().parents[1]
EVENT_WAIT_S = 120      # a guard against a hung test; every wait below ends on an event long before it


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(TOPICS):
        (folder / f"topic{i}.txt").write_text(text)
    return folder


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """Named collections under tmp (platformdirs follows XDG_DATA_HOME on Linux)."""
    home = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return home / "qwen3-gguf" / "collections"


def stored(db) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT d.path, c.chunk, c.char_start, c.char_end, c.text, c.vector FROM chunks c "
                                  "JOIN documents d ON d.id = c.document_id ORDER BY d.path, c.chunk").fetchall()


# --- records ---------------------------------------------------------------------------------------


def test_records_carry_text_and_model_in_jsonl_and_parquet(corpus, tmp_path, embedding_gguf_64):
    jsonl, parquet, bare = tmp_path / "out.jsonl", tmp_path / "out.parquet", tmp_path / "bare.jsonl"
    for output, fmt, extra in ((jsonl, "jsonl", ()), (parquet, "parquet", ()), (bare, "jsonl", ("--no-text",))):
        result = run("embed-files", corpus, "-m", embedding_gguf_64, "--format", fmt, "-o", output, *extra)
        assert result.exit_code == 0, result.output
    sha256 = file_sha256(embedding_gguf_64)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    first = next(line for line in lines if line["path"].endswith("topic5.txt"))
    assert first["text"] == TOPICS[5] and first["model"] == embedding_gguf_64.name
    assert first["model_sha256"] == sha256 and first["instruction"] is None and first["dim"] == 64
    table = pq.read_table(parquet).to_pylist()
    assert [(r["path"], r["text"], r["model"], r["model_sha256"]) for r in table] == \
        [(r["path"], r["text"], r["model"], r["model_sha256"]) for r in lines]
    assert all("text" not in json.loads(line) and json.loads(line)["model_sha256"] == sha256
               for line in bare.read_text().splitlines())


def test_import_of_a_parquet_file_alone_equals_index_of_the_files(corpus, tmp_path, embedding_gguf_64, monkeypatch):
    records, imported, indexed = tmp_path / "out.parquet", tmp_path / "imported.db", tmp_path / "indexed.db"
    assert run("embed-files", corpus, "-m", embedding_gguf_64, "--format", "parquet", "-o", records).exit_code == 0
    assert run("index", corpus, "--db", indexed, "-m", embedding_gguf_64).exit_code == 0
    shutil.rmtree(corpus)                                      # neither the sources nor -m are needed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run("index", "--import", records, "--db", imported)
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"imported 8 chunks of 8 files from {records} (0 match the files on disk); "
                             f"{imported} holds 8 files, 8 chunks\n")
    ours, theirs = stored(imported), stored(indexed)
    assert [row[:5] for row in ours] == [row[:5] for row in theirs]
    np.testing.assert_allclose(np.frombuffer(b"".join(r[5] for r in ours), "<f4"),
                               np.frombuffer(b"".join(r[5] for r in theirs), "<f4"), atol=1e-6)
    unfound = run("search", TOPICS[3], "--db", imported)       # the records name a file that is not here
    assert (unfound.exit_code, unfound.stderr) == (2, f"Error: model file not found: {embedding_gguf_64.name}\n")
    searches = [run("search", TOPICS[3], "--db", db, "--json", "--no-instruction", "-m", embedding_gguf_64)
                for db in (imported, indexed)]
    assert searches[0].exit_code == 0 and searches[1].exit_code == 0, searches[0].output
    assert run("search", TOPICS[3], "--db", imported).exit_code == 0      # the collection now knows where it is
    assert [json.loads(line)["path"] for line in searches[0].stdout.splitlines()] == \
        [json.loads(line)["path"] for line in searches[1].stdout.splitlines()]


def test_records_of_another_model_are_refused_naming_both(corpus, tmp_path, embedding_gguf_64,
                                                           old_style_embedding_gguf_64):
    records, db = tmp_path / "out.jsonl", tmp_path / "v.db"
    assert run("embed-files", corpus, "-m", embedding_gguf_64, "-o", records).exit_code == 0
    other = old_style_embedding_gguf_64                     # the same shape, other bytes
    given = run("index", "--import", records, "--db", db, "-m", other)
    assert given.exit_code == 2 and not db.exists()
    sha, other_sha = file_sha256(embedding_gguf_64)[:12], file_sha256(other)[:12]
    assert given.stderr == (f"Error: the records were embedded with {embedding_gguf_64.name} (GGUF sha256 {sha}…); "
                            f"the model given is {other} (sha256 {other_sha}…). Import them with their own model, "
                            "into a new --db\n")
    assert run("index", corpus, "--db", db, "-m", other).exit_code == 0
    recorded = run("index", "--import", records, "--db", db)
    assert recorded.exit_code == 2
    assert recorded.stderr.startswith(f"Error: the records were embedded with {embedding_gguf_64.name} (GGUF sha256 "
                                      f"{sha}…); {db} holds vectors of {other.resolve()} (sha256 {other_sha}…)")


# --- named collections -----------------------------------------------------------------------------


def test_named_collections_from_any_folder(corpus, tmp_path, data_home, embedding_gguf_64, monkeypatch):
    monkeypatch.chdir(corpus)
    assert run("collections").stdout.startswith("no collections in ")
    made = run("index", ".", "--collection", "notes", "-m", embedding_gguf_64)
    assert made.exit_code == 0, made.output
    assert made.stderr.rstrip().endswith(f"{data_home / 'notes.db'} holds 8 files, 8 chunks")
    assert run("index", corpus / "topic1.txt", "-m", embedding_gguf_64).exit_code == 0   # the default collection
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    found = run("search", TOPICS[4], "-c", "notes", "-k", 1, "--no-instruction", "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["path"] == str(corpus / "topic4.txt")
    default = run("search", TOPICS[1], "-k", 1, "--json")
    assert default.exit_code == 0 and json.loads(default.stdout)["path"] == str(corpus / "topic1.txt")
    listed = run("collections", "--json")
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["name"], e["files"], e["chunks"], e["dim"]) for e in entries] == [("default", 1, 1, 64),
                                                                                   ("notes", 8, 8, 64)]
    assert all(e["model"] == str(embedding_gguf_64.resolve()) and e["bytes"] > 0 for e in entries)
    table = run("collections").stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "DIM", "FILES", "CHUNKS", "SIZE"]
    assert table[2].split()[:5] == ["notes", embedding_gguf_64.name, "64", "8", "8"]


def test_collection_bad_input(tmp_path, data_home, embedding_gguf_64):
    (tmp_path / "tea.txt").write_text(TOPICS[6])
    assert run("index", tmp_path / "tea.txt", "-c", "notes", "-m", embedding_gguf_64).exit_code == 0
    unknown = run("search", "tea", "-c", "nope")
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("Error: no collection named 'nope' (collections: ")
    both = run("search", "tea", "-c", "notes", "--db", tmp_path / "v.db")
    assert (both.exit_code, both.stderr) == (2, "Error: give either --db PATH or -c/--collection NAME, not both\n")
    bad = run("index", tmp_path, "-c", "../escape")
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: collection name '../escape': use letters")
    empty = run("search", "  ", "-c", "notes")
    assert (empty.exit_code, empty.stderr) == (2, "Error: the query is empty\n")


# --- index --watch ---------------------------------------------------------------------------------


def test_watch_follows_creations_edits_and_deletions(corpus, tmp_path, embedder_64):
    batches: queue.Queue = queue.Queue()
    stop = threading.Event()
    db = tmp_path / "v.db"

    def follow():
        with Collection(db, embedder=embedder_64) as collection:
            watch(collection, [str(corpus)], on_batch=batches.put, stop=stop, debounce_ms=200)

    watcher = threading.Thread(target=follow)
    watcher.start()
    try:
        assert batches.get(timeout=EVENT_WAIT_S).files == 8       # batch 0: the catch-up index; watching now

        def follows(change, expected: dict[str, str]) -> None:
            """Make `change`, then wait on batches until the collection holds `expected` (name → text)."""
            change()
            while True:
                batch = batches.get(timeout=EVENT_WAIT_S)
                assert batch.number >= 1 and batch.changes >= 1
                texts = {Path(path).name: text for path, _, _, _, text, _ in stored(db)}
                if texts == expected:
                    return

        expected = {f"topic{i}.txt": text for i, text in enumerate(TOPICS)}
        expected["new.txt"] = "Owls hunt at night."
        follows(lambda: (corpus / "new.txt").write_text("Owls hunt at night."), expected)
        expected["topic2.txt"] = "The Colosseum is in Rome."
        follows(lambda: (corpus / "topic2.txt").write_text("The Colosseum is in Rome."), expected)
        del expected["topic0.txt"]
        follows(lambda: (corpus / "topic0.txt").unlink(), expected)
    finally:
        stop.set()
        watcher.join(EVENT_WAIT_S)
    assert not watcher.is_alive()
    with Collection(db, create=False) as collection:
        hit = collection.search("The Colosseum is in Rome.", k=1, use_instruction=False)[0]
    assert hit.path == str(corpus / "topic2.txt")


def test_watch_cli_ctrl_c_keeps_the_finished_batches(corpus, tmp_path, embedding_gguf_64):
    db = tmp_path / "v.db"
    process = subprocess.Popen([sys.executable, "-c", "from qwen3_gguf.cli import cli; cli()", "index", str(corpus),
                                "--db", str(db), "-m", str(embedding_gguf_64), "--watch"],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        first = process.stderr.readline()
        assert first.startswith("indexed 8 new or changed files (8 chunks), 0 removed; ")
        assert first.rstrip().endswith("holds 8 files, 8 chunks; watching for changes (Ctrl-C stops)")
        (corpus / "new.txt").write_text("Owls hunt at night.")
        batch = process.stderr.readline()
        assert batch.startswith("batch 1: ") and batch.rstrip().endswith("holds 9 files, 9 chunks"), batch
        process.send_signal(signal.SIGINT)
        assert process.wait(EVENT_WAIT_S) == 0
        assert process.stderr.read() == f"stopped watching; every finished batch is in {db}\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(stored(db)) == 9


def test_watch_bad_input(tmp_path, embedding_gguf_64):
    missing = run("index", tmp_path / "nowhere", "--db", tmp_path / "v.db", "-m", embedding_gguf_64, "--watch")
    assert (missing.exit_code, missing.stderr) == (2, f"Error: no such file or folder: {tmp_path / 'nowhere'}\n")
    imports_only = run("index", "--import", tmp_path / "x.jsonl", "--db", tmp_path / "v.db", "--watch")
    assert imports_only.exit_code == 2
    assert imports_only.stderr == "Error: --watch follows the files and folders named: give PATHS\n"


# --- the MCP server --------------------------------------------------------------------------------


@pytest.fixture
def indexed(corpus, tmp_path, embedding_gguf_64):
    db = tmp_path / "v.db"
    assert run("index", corpus, "--db", db, "-m", embedding_gguf_64).exit_code == 0
    return db


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from qwen3_gguf.cli import cli; cli()", "mcp", *args]


async def exercise(client: Client, corpus: Path) -> None:
    """List the tools, search, get, status, bad arguments; the server answers every call after them."""
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"search", "get", "status"}
    assert tools["search"].input_schema["properties"]["mode"]["anyOf"][0]["enum"] == ["vector", "keyword", "hybrid"]
    found = await client.call_tool("search", {"query": TOPICS[6], "k": 3})
    assert not found.is_error
    hits = found.structured_content["result"]
    assert len(hits) == 3 and {"path", "chunk", "start", "end", "score", "text"} == set(hits[0])
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    got = await client.call_tool("get", {"target": f"{corpus / 'topic6.txt'}#0"})
    assert not got.is_error
    assert got.structured_content == {"path": str(corpus / "topic6.txt"), "chunk": 0, "start": 0,
                                      "end": len(TOPICS[6]), "text": TOPICS[6], "more": False}
    status = (await client.call_tool("status", {})).structured_content
    assert (status["files"], status["chunks"], status["dim"]) == (8, 8, 64)
    assert status["modes"] == ["vector", "keyword", "hybrid"]
    for name, arguments, message in [
        ("search", {}, "query"),                                            # missing
        ("search", {"query": "tea", "k": "many"}, "k"),                     # mistyped
        ("search", {"query": "tea", "mode": "fuzzy"}, "mode"),
        ("search", {"query": "   "}, "the query is empty"),
        ("search", {"query": "tea", "rerank": True}, "--rerank-model"),
        ("get", {"target": str(corpus / "absent.txt")}, "absent.txt is not in the collection"),
        ("get", {"target": f"{corpus / 'topic1.txt'}#7"}, "topic1.txt#7 is not in the collection"),
        ("get", {"target": str(corpus / "topic*.txt")}, "names 8 files"),
    ]:
        failed = await client.call_tool(name, arguments)
        assert failed.is_error and message in failed.content[0].text, (arguments, failed.content)
    again = await client.call_tool("search", {"query": TOPICS[6], "k": 1})
    assert not again.is_error and again.structured_content["result"][0]["path"] == hits[0]["path"]


def test_mcp_over_stdio_with_the_sdk_client(indexed, corpus):
    command = server_command("--db", str(indexed))
    parameters = StdioServerParameters(command=command[0], args=command[1:],
                                       env={**os.environ, "PYTHONPATH": str(REPO)})

    async def session():
        async with Client(parameters) as client:
            await exercise(client, corpus)

    anyio.run(session)


def test_mcp_over_streamable_http_on_loopback(indexed, corpus):
    process = subprocess.Popen(server_command("--db", str(indexed), "--http", "127.0.0.1:0"),
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        banner = process.stderr.readline()                 # printed once the socket listens
        assert banner.startswith("qwen3-gguf mcp: http://127.0.0.1:") and banner.rstrip().endswith("/mcp")
        url = banner.split(": ", 1)[1].strip()

        async def session():
            async with Client(url) as client:
                await exercise(client, corpus)

        anyio.run(session)
    finally:
        process.terminate()
        process.wait(EVENT_WAIT_S)


def test_mcp_bad_input(indexed, tmp_path):
    exposed = run("mcp", "--db", indexed, "--http", "0.0.0.0:8765")
    assert exposed.exit_code == 2 and "serve it on a loopback address" in exposed.stderr
    malformed = run("mcp", "--db", indexed, "--http", "8765")
    assert (malformed.exit_code, malformed.stderr) == (2, "Error: --http 8765: give HOST:PORT, e.g. 127.0.0.1:8765\n")
    missing = run("mcp", "--db", tmp_path / "none.db")
    assert missing.exit_code == 2 and missing.stderr.startswith(f"Error: no collection at {tmp_path / 'none.db'}")
