"""`qwen3-gguf serve` as a process: the official openai SDK against it, SIGTERM draining, the
banner, and setups refused before anything listens."""

from __future__ import annotations

import signal
import socket
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")
import httpx  # noqa: E402
from server_harness import ServeProcess  # noqa: E402

from qwen3_gguf import Embedder, Reranker  # noqa: E402
from qwen3_gguf.cli import cli  # noqa: E402
from qwen3_gguf.cli.serve import _is_loopback  # noqa: E402

TEXTS = ["GGUF is the file format of llama.cpp.", "Der Himmel ist blau.", "量子计算机利用量子比特进行运算。"]


def min_cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.mark.slow
def test_the_openai_sdk_against_a_live_serve_process(embedding_gguf_256, reranker_tied_gguf):
    openai = pytest.importorskip("openai")
    with Embedder(embedding_gguf_256, device="cpu") as reference:
        expected = reference.encode(TEXTS)
        n_tokens = sum(len(reference.tokenize(t)[0]) for t in TEXTS)
        queries = reference.encode(TEXTS, prompt_name="query", dim=64)
    with Reranker(reranker_tied_gguf, device="cpu") as reranker:
        scores = reranker.score("what is GGUF?", TEXTS)

    server = ServeProcess("-m", str(embedding_gguf_256), "--rerank-model", str(reranker_tied_gguf),
                          "--device", "cpu", env={"QWEN3_GGUF_API_KEY": "test-key"})
    with server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=0, timeout=60)
        default = client.embeddings.create(model="qwen3-embedding", input=TEXTS)  # the SDK asks for base64
        assert [d.index for d in default.data] == [0, 1, 2]
        assert min_cosine([d.embedding for d in default.data], expected) >= 0.99999
        assert default.usage.prompt_tokens == n_tokens
        floats = client.embeddings.create(model="qwen3-embedding", input=TEXTS, encoding_format="float")
        assert min_cosine([d.embedding for d in floats.data], expected) >= 0.99999
        query = client.embeddings.create(model="qwen3-embedding", input=TEXTS, dimensions=64,
                                         extra_body={"input_type": "query"})
        assert len(query.data[0].embedding) == 64
        assert min_cosine([d.embedding for d in query.data], queries) >= 0.99999
        assert {m.id for m in client.models.list()} == {embedding_gguf_256.stem, embedding_gguf_256.stem + "-query",
                                                         reranker_tied_gguf.stem}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
                model="m", input="x")
        with pytest.raises(openai.BadRequestError, match="'input\\[1\\]' is an empty string"):
            client.embeddings.create(model="m", input=["fine", ""])
        ranked = httpx.post(f"{server.url}/v1/rerank", headers={"Authorization": "Bearer test-key"}, timeout=60,
                            json={"query": "what is GGUF?", "documents": TEXTS}).json()["results"]
        assert all(abs(r["relevance_score"] - scores[r["index"]]) <= 1e-6 for r in ranked)
        code, _, err = server.terminate()
    assert code == 0
    assert f"qwen3-gguf serve: {server.url}" in err
    assert f"embedding  {embedding_gguf_256.stem}  (ALL_F32, 256 dimensions)" in err
    assert f"reranker   {reranker_tied_gguf.stem}  (ALL_F32)" in err
    assert "/v1/embeddings" in err and "/v2/rerank" in err and "/metrics" in err
    assert "API key    required" in err
    assert "Ready: models loaded" in err and "Stopped." in err


# The child's first encode holds, after touching ENTERED, until the test creates RELEASE.
HOLD_FIRST_ENCODE = """
import pathlib, time
from qwen3_gguf.embed import Embedder
entered, release, encode = pathlib.Path({entered!r}), pathlib.Path({release!r}), Embedder.encode

def held_encode(self, texts, **options):
    if not entered.exists():
        entered.touch()
        while not release.exists():
            time.sleep(0.01)
    return encode(self, texts, **options)

Embedder.encode = held_encode
"""


def wait_for(condition, what: str, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=5)
    except httpx.ConnectError:
        return True
    return False


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_then_exits_0(embedding_gguf_256, tmp_path):
    texts = [f"text {i} " + "many words to embed " * 20 for i in range(8)]
    entered, release = tmp_path / "entered", tmp_path / "release"
    server = ServeProcess("-m", str(embedding_gguf_256), "--device", "cpu", "--threads", "1",
                          prelude=HOLD_FIRST_ENCODE.format(entered=str(entered), release=str(release)))
    answers = []
    with server:
        sender = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{server.url}/v1/embeddings", json={"input": texts}, timeout=120)))
        sender.start()
        wait_for(entered.exists, "the request never reached the engine")
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(server.url), "the server kept listening after SIGTERM")
        release.touch()                          # the request in flight goes on only now, while stopping
        _, err = server.process.communicate(timeout=120)
        sender.join(120)
    assert server.process.returncode == 0, err
    assert answers[0].status_code == 200
    assert len(answers[0].json()["data"]) == len(texts)
    assert "Stopped." in err


@pytest.mark.slow
def test_setups_that_cannot_work_are_refused_before_listening(embedding_gguf_256, reranker_tied_gguf, tmp_path):
    runner = CliRunner()

    def serve(*args):
        return runner.invoke(cli, ["serve", *args, "--port", "0"])

    missing = serve("-m", str(tmp_path / "nope.gguf"))
    assert missing.exit_code == 2 and "nope.gguf" in missing.output and "Traceback" not in missing.output
    swapped = serve("-m", str(reranker_tied_gguf))
    assert swapped.exit_code == 2 and "reranker" in swapped.output
    wrong_rerank = serve("--no-embedding", "--rerank-model", str(embedding_gguf_256))
    assert wrong_rerank.exit_code == 2 and "embedding" in wrong_rerank.output
    nothing = serve("--no-embedding")
    assert nothing.exit_code == 2 and "nothing to serve" in nothing.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = runner.invoke(cli, ["serve", "-m", str(embedding_gguf_256), "--port", str(port)])
    assert taken.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.output


def test_loopback_addresses_are_told_apart_from_exposed_ones():
    assert all(_is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))
