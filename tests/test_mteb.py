"""MTEB task scores of a GGUF: the encoder against a hand computation, the command, the sweep column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mteb
import numpy as np
import pytest
import pytrec_eval
from click.testing import CliRunner

from qwen3_gguf import Embedder
from qwen3_gguf.cli import cli
from qwen3_gguf.gguf_file import file_sha256
from qwen3_gguf.mteb_tasks import GGUFEncoder, resolve_tasks, run_tasks
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION

TOPICS = {
    "gguf": ["GGUF is the file format llama.cpp reads.", "A GGUF file holds tensors and metadata."],
    "tea": ["Green tea is steeped at about 80 degrees.", "Black tea takes boiling water and four minutes."],
    "rust": ["Rust's borrow checker prevents data races.", "Cargo builds Rust crates."],
    "bees": ["Honey bees dance to share where flowers are.", "A hive keeps its queen warm in winter."],
    "tides": ["The moon's pull raises the tides.", "Spring tides come at new and full moon."],
}
QUERIES = {"gguf": "what file does llama.cpp load", "tea": "how hot should tea water be",
           "rust": "memory safety without a garbage collector", "bees": "how bees communicate",
           "tides": "why the sea rises and falls"}


def write_task(folder, name="TinyRetrieval"):
    """A retrieval task in the BEIR layout mteb's retrieval datasets use, with graded qrels."""
    task = folder / name
    (task / "qrels").mkdir(parents=True)
    corpus, qrels = [], ["query-id\tcorpus-id\tscore"]
    for topic, documents in TOPICS.items():
        for n, text in enumerate(documents):
            corpus.append({"_id": f"{topic}-{n}", "title": "", "text": text})
            qrels.append(f"q-{topic}\t{topic}-{n}\t{2 - n}")
    (task / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (task / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q-{t}", "text": q}) + "\n"
                                                for t, q in QUERIES.items()), encoding="utf-8")
    (task / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return task


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task"))


def ndcg_at_10_by_hand(embedder, instruction, dim=None):
    """nDCG@10 from Embedder.encode vectors and pytrec_eval on the task's qrels."""
    doc_ids = [f"{t}-{n}" for t, docs in TOPICS.items() for n in range(len(docs))]
    docs = embedder.encode([d for docs in TOPICS.values() for d in docs], dim=dim)
    queries = embedder.encode(list(QUERIES.values()), instruction=instruction, dim=dim)
    scores = queries @ docs.T
    run = {f"q-{t}": {d: float(s) for d, s in zip(doc_ids, row)} for t, row in zip(QUERIES, scores)}
    qrels = {f"q-{t}": {f"{t}-{n}": 2 - n for n in range(len(docs))} for t, docs in TOPICS.items()}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))


@pytest.mark.parametrize("dim", [None, 32])
def test_ndcg_at_10_equals_the_hand_computation(embedding_gguf_256, task_folder, dim):
    with Embedder(embedding_gguf_256) as embedder:
        expected = ndcg_at_10_by_hand(embedder, DEFAULT_INSTRUCTION, dim)
        scores, _ = run_tasks(embedder, resolve_tasks([str(task_folder)]), dim=dim)
    assert [(s.task, s.main_score, s.splits) for s in scores] == [("TinyRetrieval", "ndcg_at_10", ("test",))]
    assert scores[0].score == pytest.approx(expected, abs=5e-6)  # mteb keeps 5 decimals
    assert 0 < expected < 1   # the fixture can tell a wrong ranking from a right one


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def encoded(monkeypatch):
    """Every Embedder.encode call: (model file name, instruction, texts)."""
    calls = []
    original = Embedder.encode

    def spy(self, texts, **kwargs):
        calls.append((self.model_file.path.name, kwargs.get("instruction"), list(texts)))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "encode", spy)
    return calls


def test_the_reranker_as_mtebs_cross_encoder(reranker_tied_gguf, tmp_path):
    """A reranking task (each query's candidates in top_ranked): nDCG@10 of mteb over GGUFCrossEncoder
    equals the one computed from Reranker.score with pytrec_eval."""
    from qwen3_gguf import Reranker
    from qwen3_gguf.mteb_tasks import GGUFCrossEncoder

    task = write_task(tmp_path)
    doc_ids = [f"{t}-{n}" for t, docs in TOPICS.items() for n in range(len(docs))]
    (task / "top_ranked").mkdir()
    (task / "top_ranked" / "test.jsonl").write_text("".join(
        json.dumps({"query-id": f"q-{t}", "corpus-ids": doc_ids}) + "\n" for t in QUERIES), encoding="utf-8")
    documents = [d for docs in TOPICS.values() for d in docs]
    with Reranker(reranker_tied_gguf) as reranker:
        run = {f"q-{t}": dict(zip(doc_ids, map(float, reranker.score(q, documents)))) for t, q in QUERIES.items()}
        qrels = {f"q-{t}": {f"{t}-{n}": 2 - n for n in range(len(docs))} for t, docs in TOPICS.items()}
        per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
        expected = float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))
        results = mteb.evaluate(GGUFCrossEncoder(reranker), resolve_tasks([str(task)]), cache=None,
                                show_progress_bar=False)
    assert results.task_results[0].get_score() == pytest.approx(expected, abs=5e-6)
    assert 0 < expected < 1


def test_queries_carry_the_instruction_documents_none(embedding_gguf_256, task_folder, encoded):
    with Embedder(embedding_gguf_256) as embedder:
        run_tasks(embedder, resolve_tasks([str(task_folder)]))
        assert sorted((instruction or "", sorted(texts)) for _, instruction, texts in encoded) == sorted([
            (DEFAULT_INSTRUCTION, sorted(QUERIES.values())),
            ("", sorted(d for docs in TOPICS.values() for d in docs))])
        encoded.clear()
        run_tasks(embedder, resolve_tasks([str(task_folder)]), instructions={"TinyRetrieval": "Find the passage"})
        assert {instruction for _, instruction, _ in encoded} == {"Find the passage", None}


def test_the_instruction_of_a_registered_task(embedding_gguf_256):
    """mteb's own task prompts win over the default; a user's mapping wins over both."""
    from mteb.types import PromptType

    nfcorpus, arguana = mteb.get_task("NFCorpus").metadata, mteb.get_task("ArguAna").metadata
    with Embedder(embedding_gguf_256) as embedder:
        encoder = GGUFEncoder(embedder)
        assert encoder.instruction_for(nfcorpus, PromptType.query) == nfcorpus.prompt["query"]
        assert encoder.instruction_for(nfcorpus, PromptType.document) is None
        mapped = GGUFEncoder(embedder, instructions={"Retrieval": "Mine", "NFCorpus": "Medical"})
        assert mapped.instruction_for(nfcorpus, PromptType.query) == "Medical"
        assert mapped.instruction_for(arguana, PromptType.query) == "Mine"


def test_the_command_writes_mtebs_layout_and_reuses_its_cache(embedding_gguf_256, task_folder, tmp_path, encoded):
    out = tmp_path / "results"
    result = run("mteb", "-m", embedding_gguf_256, "--tasks", task_folder, "-o", out)
    assert result.exit_code == 0, result.output
    model_folder = out / "results" / f"qwen3-gguf__{embedding_gguf_256.stem}" / file_sha256(embedding_gguf_256)[:16]
    saved = json.loads((model_folder / "TinyRetrieval.json").read_text())
    score = saved["scores"]["test"][0]["main_score"]
    assert saved["task_name"] == "TinyRetrieval" and 0 < score < 1
    assert result.stdout.splitlines()[1].split()[:3] == ["TinyRetrieval", "ndcg_at_10", f"{score:.5f}"]
    assert "15 texts embedded, 0 read from the cache" in result.stderr
    assert len(encoded) == 2

    encoded.clear()
    again = run("mteb", "-m", embedding_gguf_256, "--tasks", task_folder, "-o", out)
    assert again.exit_code == 0 and again.stdout == result.stdout
    assert "0 texts embedded, 15 read from the cache" in again.stderr and not encoded


def test_ctrl_c_leaves_the_cache_consistent(embedding_gguf_256, task_folder, tmp_path, monkeypatch):
    """Interrupted while embedding the documents (after the queries were cached): exit 130, only
    whole cache entries, and the re-run embeds the documents alone."""
    original = Embedder.encode
    seen = []

    def interrupt_on_documents(self, texts, **kwargs):
        seen.append(kwargs.get("instruction"))
        if kwargs.get("instruction") is None:
            raise KeyboardInterrupt
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "encode", interrupt_on_documents)
    out = tmp_path / "results"
    result = run("mteb", "-m", embedding_gguf_256, "--tasks", task_folder, "-o", out)
    assert result.exit_code == 130
    entries = sorted((out / "embeddings").rglob("*"))
    files = [p for p in entries if p.is_file()]
    assert [p.name.split("-")[2] for p in files] == ["query"]          # no partial or temporary file
    assert np.load(files[0]).shape == (len(QUERIES), 256)
    monkeypatch.setattr(Embedder, "encode", original)
    again = run("mteb", "-m", embedding_gguf_256, "--tasks", task_folder, "-o", out)
    assert again.exit_code == 0, again.output
    assert f"{sum(map(len, TOPICS.values()))} texts embedded, {len(QUERIES)} read from the cache" in again.stderr


# --- sweep --mteb ----------------------------------------------------------------------------------


def test_sweep_mteb_column_and_a_rerun_embeds_only_the_new_file(embedding_gguf_256, imatrix_256, task_folder,
                                                               tmp_path, encoded):
    from qwen3_gguf.quantization import write_imatrix

    imatrix = write_imatrix(imatrix_256.matrix, tmp_path / "imatrix.gguf")
    out = tmp_path / "sweep"
    common = ["sweep", embedding_gguf_256, "-o", out, "--recipes", "llama-default", "--imatrix", imatrix,
              "--limit", 8, "--mteb", task_folder]
    first = run(*common, "--types", "Q8_0")
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    scores = {r["label"]: r["mteb"]["TinyRetrieval"] for r in report["rows"]}
    assert set(scores) == {"F32 (reference)", "Q8_0 llama-default"}
    assert scores["F32 (reference)"]["delta"] == 0.0
    assert all(s["metric"] == "ndcg_at_10" and 0 < s["score"] < 1 for s in scores.values())
    q8 = scores["Q8_0 llama-default"]
    assert q8["delta"] == pytest.approx(q8["score"] - scores["F32 (reference)"]["score"])
    markdown = (out / "report.md").read_text()
    assert "| TinyRetrieval ndcg_at_10 | Δ TinyRetrieval |" in markdown
    assert f"| {scores['F32 (reference)']['score']:.5f} | +0.00000 |" in markdown
    assert (out / "mteb" / "results" / f"qwen3-gguf__{embedding_gguf_256.stem}").is_dir()

    encoded.clear()
    second = run(*common, "--types", "Q8_0,Q4_K_M")
    assert second.exit_code == 0, second.output
    embedded = Counter(name for name, _, _ in encoded)
    assert set(embedded) == {"embedding-2560-q4_k_m-llama-default.gguf"}, embedded
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {r["label"]: r["mteb"]["TinyRetrieval"]["score"] for r in rows if r["type"] != "Q4_K_M"} == {
        label: s["score"] for label, s in scores.items()}
    assert len({r["label"] for r in rows}) == 3


# --- bad input -------------------------------------------------------------------------------------


def test_an_uncached_task_offline_is_one_line_before_any_model_loads(embedding_gguf_256, tmp_path):
    arguments = ["mteb", "-m", str(embedding_gguf_256), "--tasks", "NFCorpus", "-o", str(tmp_path)]
    program = ("import qwen3_gguf.embed as e\n"
               "def refuse(*a, **k): raise SystemExit('the model was loaded')\n"
               "e.Embedder.__init__ = refuse\n"
               "from qwen3_gguf.cli import cli\n"
               f"cli({arguments!r})\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "MTEB_CACHE": str(tmp_path / "m"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "Error: MTEB task NFCorpus: its dataset mteb/nfcorpus is not in the Hugging Face cache and offline mode "
        "is on (HF_HUB_OFFLINE=1); fetch it once with network access: "
        "python -c \"import mteb; mteb.get_task('NFCorpus').load_data()\""]


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "NFCorpuz"], "Error: unknown MTEB task 'NFCorpuz' (and no such folder); did you mean NFCorpus,"),
    (["--tasks", " , "], "Error: --tasks is empty"),
    (["--tasks", "NFCorpus", "--instruction", "no equals sign"], "Error: --instruction 'no equals sign': expected"),
    (["--tasks", "NFCorpus", "--dim", "8"], "Error: --dim 8 is outside 32…256"),
    (["--tasks", "NFCorpus", "--dim", "512"], "Error: --dim 512 is outside 32…256"),
])
def test_bad_input(args, message, embedding_gguf_256, task_folder, tmp_path):
    result = run("mteb", "-m", embedding_gguf_256, "-o", tmp_path, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_reranker_is_not_an_embedding_model(reranker_tied_gguf, task_folder, tmp_path):
    result = run("mteb", "-m", reranker_tied_gguf, "--tasks", task_folder, "-o", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {reranker_tied_gguf} is a reranker, not an embedding model; " \
                            "use qwen3-gguf rerank / Reranker for it\n"
    swept = run("sweep", reranker_tied_gguf, "-o", tmp_path / "sweep", "--mteb", task_folder)
    assert swept.exit_code == 2
    assert swept.stderr == f"Error: --mteb scores embedding models; {reranker_tied_gguf} is a reranker\n"


def test_a_folder_that_is_not_a_task(embedding_gguf_256, tmp_path):
    (tmp_path / "notes").mkdir()
    result = run("mteb", "-m", embedding_gguf_256, "--tasks", tmp_path / "notes", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {tmp_path / 'notes'} is not a retrieval task folder: it lacks corpus.jsonl, "
                             "queries.jsonl, qrels (expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv)\n")
