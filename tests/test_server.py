"""The HTTP server over real models, through a real HTTP client on a loopback port.

Every route and form, numbers against Embedder.encode / Reranker.score (separate instances of
the same files), bad input in each family's error shape, limits, auth, concurrency, overload
and disconnects.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402
from server_harness import ThreadServer  # noqa: E402

from qwen3_gguf import Embedder, Reranker  # noqa: E402
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION  # noqa: E402
from qwen3_gguf.server import Limits, create_app  # noqa: E402

pytestmark = pytest.mark.slow

MAX_TOKENS = 512  # the models' input limit here, so over-long inputs are cheap to make
TEXTS = [
    "GGUF is the file format of llama.cpp.",
    "Der Himmel ist blau, weil kurzwelliges Licht stärker gestreut wird.",
    "量子计算机利用量子比特进行运算。",
    "def add(a, b):\n    return a + b",
    "A user typed <|im_start|> and <|endoftext|> into a document.",
]
QUERY = "which file format does llama.cpp use?"
DOCUMENTS = [
    "GGUF is the file format of llama.cpp.",
    "Bananas are rich in potassium.",
    "The Rhine flows through Basel, Strasbourg and Cologne.",
    "llama.cpp reads models stored as GGUF files with metadata and tensors.",
    "Tides are caused mainly by the Moon.",
]


@pytest.fixture(scope="module")
def embedder(embedding_gguf_256):
    with Embedder(embedding_gguf_256, device="cpu", max_tokens=MAX_TOKENS) as model:
        yield model


@pytest.fixture(scope="module")
def reranker(reranker_tied_gguf):
    with Reranker(reranker_tied_gguf, device="cpu", max_tokens=MAX_TOKENS) as model:
        yield model


@pytest.fixture(scope="module")
def reference(embedding_gguf_256):
    """The in-process answer, from an Embedder of its own (never shared with the server's thread)."""
    with Embedder(embedding_gguf_256, device="cpu", max_tokens=MAX_TOKENS) as model:
        yield model


@pytest.fixture(scope="module")
def reference_reranker(reranker_tied_gguf):
    with Reranker(reranker_tied_gguf, device="cpu", max_tokens=MAX_TOKENS) as model:
        yield model


@pytest.fixture(scope="module")
def live(embedder, reranker):
    limits = Limits(max_inputs=64, max_request_bytes=1 << 20)
    with ThreadServer(create_app(embedder, reranker, limits=limits, accept_token_ids=True)) as s:
        yield s


@pytest.fixture
def client(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


def assert_same_vectors(got, expected, min_cos=0.99999):
    got, expected = np.atleast_2d(np.asarray(got, dtype=np.float32)), np.atleast_2d(expected)
    assert got.shape == expected.shape
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= min_cos, cos


def openai_vectors(response: httpx.Response) -> np.ndarray:
    body = response.json()
    assert response.status_code == 200, body
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    assert all(d["object"] == "embedding" for d in body["data"])
    rows = [d["embedding"] for d in body["data"]]
    if rows and isinstance(rows[0], str):
        rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]
    return np.asarray(rows, dtype=np.float32)


# --- OpenAI embeddings --------------------------------------------------------------------------


def test_openai_embeddings_equal_encode_as_floats_and_base64(client, reference):
    expected = reference.encode(TEXTS)
    for path in ("/v1/embeddings", "/embeddings"):
        for encoding in ("float", "base64"):
            response = client.post(path, json={"input": TEXTS, "model": "my-name", "encoding_format": encoding,
                                               "user": "someone"})
            assert_same_vectors(openai_vectors(response), expected)
            body = response.json()
            assert body["model"] == "my-name"
            n_tokens = sum(len(reference.tokenize(t)[0]) for t in TEXTS)
            assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    single = client.post("/v1/embeddings", json={"input": TEXTS[2]})
    assert_same_vectors(openai_vectors(single), expected[2:3])
    assert single.json()["model"] == reference.model_file.path.stem  # the served file's name when none is given


def test_token_id_inputs_equal_encode_of_their_text(client, reference):
    ids = [reference.tokenize(t)[0] for t in TEXTS]  # each ends with <|endoftext|>
    expected = reference.encode(TEXTS)
    without_eos = client.post("/v1/embeddings", json={"input": [i[:-1] for i in ids]})
    assert_same_vectors(openai_vectors(without_eos), expected)
    with_eos = client.post("/v1/embeddings", json={"input": ids, "encoding_format": "base64"})
    assert_same_vectors(openai_vectors(with_eos), expected)
    one_list = client.post("/v1/embeddings", json={"input": ids[1][:-1]})
    assert_same_vectors(openai_vectors(one_list), expected[1:2])


def test_token_ids_outside_the_vocabulary_are_refused(client, reference):
    ids = reference.tokenize(TEXTS[0])[0]
    for bad in (151669, -1, 10**12):
        response = client.post("/v1/embeddings", json={"input": [ids, [*ids[:3], bad]]})
        assert response.status_code == 400
        error = response.json()["error"]
        assert f"'input[1]' holds token id {bad}" in error["message"]
        assert "151668" in error["message"]
        assert error["param"] == "input" and error["type"] == "invalid_request_error"


def test_dimensions_and_query_instructions_equal_encode(client, reference):
    cases = [
        ({"dimensions": 64}, reference.encode(TEXTS, dim=64)),
        ({"input_type": "query"}, reference.encode(TEXTS, prompt_name="query")),
        ({"prompt_name": "query", "dimensions": 32}, reference.encode(TEXTS, prompt_name="query", dim=32)),
        ({"instruction": "Find the code that adds numbers"},
         reference.encode(TEXTS, instruction="Find the code that adds numbers")),
        ({"input_type": "document"}, reference.encode(TEXTS)),
    ]
    for extra, expected in cases:
        vectors = openai_vectors(client.post("/v1/embeddings", json={"input": TEXTS, **extra}))
        assert_same_vectors(vectors, expected)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    query_tokens = client.post("/v1/embeddings", json={"input": TEXTS[:1], "input_type": "query"}).json()["usage"]
    assert query_tokens["prompt_tokens"] > len(reference.tokenize(TEXTS[0])[0]) + 10  # the instruction counts


def test_queries_from_separate_requests_equal_encode_when_batched_together(client, reference):
    queries = [f"question number {i} about GGUF files?" for i in range(12)]
    expected = reference.encode(queries, prompt_name="query")
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(
            lambda q: client.post("/v1/embeddings", json={"input": q, "input_type": "query"}), queries))
    assert_same_vectors(np.concatenate([openai_vectors(r) for r in responses]), expected)


def test_models_health_and_metrics(client, embedder, reranker):
    names = [embedder.model_file.path.stem, reranker.model_file.path.stem]
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["kind"]) for m in models["data"]] == [
        (names[0], "model", "embedding"), (names[0] + "-query", "model", "embedding"),
        (names[1], "model", "reranker")]
    assert models["data"][1]["query_instruction"] == DEFAULT_INSTRUCTION
    assert client.get("/models").json() == models
    assert client.get("/health").json() == {"status": "ok", "models": names}
    client.post("/v1/embeddings", json={"input": "count me"})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ('qwen3_gguf_requests_total{route="/v1/embeddings",status="200"}',
                 'qwen3_gguf_inputs_total{model="embedding"}', 'qwen3_gguf_tokens_total{model="embedding"}',
                 'qwen3_gguf_queue_tokens{model="embedding"}', "qwen3_gguf_batch_inputs_bucket",
                 "qwen3_gguf_request_seconds_bucket", 'qwen3_gguf_decoded_inputs_total{model="embedding"}'):
        assert name in text, name


# --- TEI and Ollama embeddings ----------------------------------------------------------------


def test_tei_embed(client, reference):
    response = client.post("/embed", json={"inputs": TEXTS})
    assert response.status_code == 200
    assert_same_vectors(response.json(), reference.encode(TEXTS))
    raw = client.post("/embed", json={"inputs": TEXTS[0], "normalize": False, "dimensions": 48})
    expected = reference.encode([TEXTS[0]], normalize=False, dim=48)
    assert np.allclose(raw.json(), expected, rtol=1e-4, atol=1e-5)
    query = client.post("/embed", json={"inputs": [TEXTS[1]], "prompt_name": "query"})
    assert_same_vectors(query.json(), reference.encode([TEXTS[1]], prompt_name="query"))
    bad = client.post("/embed", json={"inputs": ["ok", ""]})
    assert bad.status_code == 400
    assert bad.json() == {"error": "'inputs[1]' is an empty string; there is nothing to embed",
                          "error_type": "Validation"}
    left = client.post("/embed", json={"inputs": "x", "truncation_direction": "Left"})
    assert left.status_code == 422 and left.json()["error_type"] == "Validation"


def test_ollama_embed_and_tags(client, reference, embedder, reranker):
    response = client.post("/api/embed", json={"model": "qwen3-embedding", "input": TEXTS[:2]})
    body = response.json()
    assert response.status_code == 200
    assert set(body) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert body["model"] == "qwen3-embedding"
    assert_same_vectors(body["embeddings"], reference.encode(TEXTS[:2]))
    assert body["prompt_eval_count"] == sum(len(reference.tokenize(t)[0]) for t in TEXTS[:2])
    assert body["total_duration"] > 0
    dims = client.post("/api/embed", json={"input": TEXTS[0], "dimensions": 100}).json()["embeddings"]
    assert_same_vectors(dims, reference.encode([TEXTS[0]], dim=100))
    tags = client.get("/api/tags").json()["models"]
    assert [t["name"] for t in tags] == [embedder.model_file.path.stem, reranker.model_file.path.stem]
    assert tags[0]["details"]["format"] == "gguf" and tags[0]["size"] > 0
    bad = client.post("/api/embed", json={"input": 5})
    assert bad.status_code == 400 and set(bad.json()) == {"error"}


# --- rerank -------------------------------------------------------------------------------------


def test_rerank_llama_cpp_form_equals_reranker_score(client, reference_reranker):
    expected = reference_reranker.score(QUERY, DOCUMENTS)
    order = list(np.argsort(-expected, kind="stable"))
    for path in ("/v1/rerank", "/rerank", "/v1/reranking"):
        response = client.post(path, json={"model": "m", "query": QUERY, "documents": DOCUMENTS})
        body = response.json()
        assert response.status_code == 200, body
        assert body["model"] == "m" and body["object"] == "list"
        assert [r["index"] for r in body["results"]] == order
        for r in body["results"]:
            assert abs(r["relevance_score"] - expected[r["index"]]) <= 1e-6
            assert r["document"] == {"text": DOCUMENTS[r["index"]]}
        assert body["usage"]["prompt_tokens"] == sum(len(reference_reranker.tokenize(QUERY, d)[0]) for d in DOCUMENTS)
    top = client.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS],
                                          "top_n": 2, "return_documents": False}).json()
    assert [r["index"] for r in top["results"]] == order[:2]
    assert "document" not in top["results"][0]
    clamped = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 99}).json()
    assert len(clamped["results"]) == len(DOCUMENTS)


def test_rerank_with_an_instruction_equals_reranker_score(client, reference_reranker):
    instruction = "Judge whether the passage names a file format"
    expected = reference_reranker.score(QUERY, DOCUMENTS, instruction=instruction)
    body = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": instruction}).json()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert np.abs(np.array([got[i] for i in range(len(DOCUMENTS))]) - expected).max() <= 1e-6


def test_rerank_tei_form(client, reference_reranker):
    expected = reference_reranker.score(QUERY, DOCUMENTS)
    order = list(np.argsort(-expected, kind="stable"))
    body = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert isinstance(body, list)
    assert [r["index"] for r in body] == order
    assert all(abs(r["score"] - expected[r["index"]]) <= 1e-6 and r["text"] == DOCUMENTS[r["index"]] for r in body)
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "top_n": 3}).json()
    assert [r["index"] for r in raw] == order[:3]
    p = expected.astype(np.float64)
    assert np.allclose([r["score"] for r in raw], np.log(p / (1 - p))[order[:3]], atol=1e-4)
    assert "text" not in raw[0]
    bad = client.post("/rerank", json={"query": QUERY, "texts": ["fine", ""]})
    assert bad.status_code == 400 and bad.json()["error_type"] == "Validation"


def test_rerank_cohere_v2(client, reference_reranker):
    expected = reference_reranker.score(QUERY, DOCUMENTS)
    body = client.post("/v2/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCUMENTS,
                                           "top_n": 3}).json()
    assert set(body) == {"id", "results", "meta"}
    assert [r["index"] for r in body["results"]] == list(np.argsort(-expected, kind="stable"))[:3]
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    assert body["meta"]["api_version"] == {"version": "2"}
    bad = client.post("/v2/rerank", json={"query": QUERY})
    assert bad.status_code == 400 and bad.json() == {"message": "'documents' is required"}


# --- bad input, in each route's shape, never a 5xx ---------------------------------------------

BAD_BODIES = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'"text"', 400, "must be a JSON object"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, 400, ""),
]


@pytest.mark.parametrize(("path", "shape"), [
    ("/v1/embeddings", "openai"), ("/embed", "tei"), ("/api/embed", "ollama"),
    ("/v1/rerank", "llama.cpp"), ("/v2/rerank", "cohere"),
])
def test_malformed_bodies_get_a_400_in_the_route_shape(client, path, shape):
    for raw, status, fragment in BAD_BODIES:
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == status, (raw[:20], response.text[:200])
        body = response.json()
        message = {"openai": lambda b: b["error"]["message"], "tei": lambda b: b["error"],
                   "ollama": lambda b: b["error"], "llama.cpp": lambda b: b["error"]["message"],
                   "cohere": lambda b: b["message"]}[shape](body)
        assert fragment in message
        assert "Traceback" not in response.text


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, "'input' must be a string or a list of strings, not null"),
    ({"input": ""}, "'input[0]' is an empty string"),
    ({"input": []}, "empty list"),
    ({"input": [["nested", ["junk"]]]}, "must be a list of integer token ids"),
    ({"input": {"a": 1}}, "not an object"),
    ({"input": "x", "dimensions": "64"}, "'dimensions' must be an integer, not a string"),
    ({"input": "x", "dimensions": 8}, "'dimensions' must be within 32…256"),
    ({"input": "x", "dimensions": 512}, "'dimensions' must be within 32…256"),
    ({"input": "x", "encoding_format": "int8"}, "'encoding_format' must be 'float' or 'base64'"),
    ({"input": "x", "input_type": "passage"}, "'input_type' must be 'query' or 'document'"),
    ({"input": "x", "model": 3}, "'model' must be a string"),
    ({"input": [1, 2], "input_type": "query"}, "token-id inputs are embedded as given"),
])
def test_wrong_types_and_values_are_400s_naming_the_field(client, body, fragment):
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "fragment"), [
    ({"documents": ["a"]}, "'query' is required"),
    ({"query": "", "documents": ["a"]}, "'query' is empty"),
    ({"query": "q", "documents": "a"}, "'documents' must be a list"),
    ({"query": "q", "documents": []}, "empty list"),
    ({"query": "q", "documents": ["a", 3]}, "'documents[1]' must be a string"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "'top_n' must be at least 1"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "'return_documents' must be a boolean"),
])
def test_bad_rerank_requests_are_400s_in_llama_cpp_shape(client, body, fragment):
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error["message"] and error["code"] == 400


def test_unknown_routes_and_methods(client):
    missing = client.post("/v1/chat/completions", json={})
    assert missing.status_code == 404
    assert "no route POST /v1/chat/completions" in missing.json()["error"]["message"]
    assert client.get("/api/nothing").json() == {"error": "there is no route GET /api/nothing "
                                                          "(see GET /v1/models and the README)"}
    wrong = client.get("/v1/embeddings")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]


# --- limits -------------------------------------------------------------------------------------


def test_bodies_over_the_size_limit_are_413s(client):
    big = {"input": ["word " * 1000] * 300}  # about 1.5 MB, over the 1 MiB limit
    response = client.post("/v1/embeddings", json=big)
    assert response.status_code == 413
    assert "1048576" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit holds while streaming
        yield b'{"input": ["'
        for _ in range(1200):
            yield b"x" * 1000
        yield b'"]}'

    streamed = client.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error_type"] == "Validation"


def test_too_many_inputs_is_a_413_naming_the_limit(client):
    response = client.post("/v1/embeddings", json={"input": ["x"] * 65})
    assert response.status_code == 413
    assert "at most 64" in response.json()["error"]["message"]
    rerank = client.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 65})
    assert rerank.status_code == 413 and "at most 64" in rerank.json()["error"]["message"]


def test_over_long_inputs_follow_each_familys_default(client, reference, reference_reranker):
    """OpenAI refuses (400), TEI's truncate defaults to false (413), Ollama's to true; llama.cpp's
    rerank refuses, TEI's rerank form refuses with 413, Cohere cuts. `truncate` overrides each."""
    long_text = "tokens " * 900
    n_tokens = len(reference.token_pieces(long_text)) + 1
    too_long = f"'{{key}}[1]' has {n_tokens} tokens, over this model's limit of {MAX_TOKENS}; " \
               'send "truncate": true to have it cut to the limit'
    expected = reference.encode(["short", long_text])  # the Embedder cuts to its limit, keeping the EOS

    openai = client.post("/v1/embeddings", json={"input": ["short", long_text]})
    assert openai.status_code == 400
    assert openai.json() == {"error": {"message": too_long.format(key="input"), "type": "invalid_request_error",
                                       "param": "input", "code": None}}
    truncated = client.post("/v1/embeddings", json={"input": ["short", long_text], "truncate": True})
    assert_same_vectors(openai_vectors(truncated), expected)
    assert truncated.json()["usage"]["prompt_tokens"] == len(reference.tokenize("short")[0]) + MAX_TOKENS
    ids = reference.tokenize(long_text)[0][:-1] + [100] * 50
    refused_ids = client.post("/v1/embeddings", json={"input": [ids]})
    assert refused_ids.status_code == 400 and f"has {len(ids) + 1} tokens" in refused_ids.json()["error"]["message"]

    for path in ("/embed", "/"):
        tei = client.post(path, json={"inputs": ["short", long_text]})
        assert tei.status_code == 413
        assert tei.json() == {"error": too_long.format(key="inputs"), "error_type": "Validation"}
        assert_same_vectors(client.post(path, json={"inputs": ["short", long_text], "truncate": True}).json(),
                            expected)

    ollama = client.post("/api/embed", json={"input": ["short", long_text]})
    assert ollama.status_code == 200
    assert_same_vectors(ollama.json()["embeddings"], expected)
    refused = client.post("/api/embed", json={"input": ["short", long_text], "truncate": False})
    assert refused.status_code == 400 and refused.json() == {"error": too_long.format(key="input")}

    n_prompt_tokens = reference_reranker.prompt_length("q", long_text)
    assert n_prompt_tokens > n_tokens > MAX_TOKENS  # the whole text and the template: the count before truncation
    too_long_prompt = (f"'{{key}}[1]' makes a prompt of {n_prompt_tokens} tokens with the query and template, over "
                       f"this model's limit of {MAX_TOKENS}; " 'send "truncate": true to have it cut to the limit')
    scores = reference_reranker.score("q", ["fine", long_text])
    llama_cpp = client.post("/v1/rerank", json={"query": "q", "documents": ["fine", long_text]})
    assert llama_cpp.status_code == 400
    assert llama_cpp.json() == {"error": {"code": 400, "message": too_long_prompt.format(key="documents"),
                                          "type": "invalid_request_error"}}
    cut = client.post("/v1/rerank", json={"query": "q", "documents": ["fine", long_text], "truncate": True}).json()
    assert np.abs(np.array([r["relevance_score"] for r in sorted(cut["results"], key=lambda r: r["index"])])
                  - scores).max() <= 1e-6
    for path in ("/rerank", "/"):
        tei_rerank = client.post(path, json={"query": "q", "texts": ["fine", long_text]})
        assert tei_rerank.status_code == 413
        assert tei_rerank.json() == {"error": too_long_prompt.format(key="texts"), "error_type": "Validation"}
    cohere = client.post("/v2/rerank", json={"query": "q", "documents": ["fine", long_text]})
    assert cohere.status_code == 200
    got = {r["index"]: r["relevance_score"] for r in cohere.json()["results"]}
    assert np.abs(np.array([got[0], got[1]]) - scores).max() <= 1e-6


def test_missing_models_answer_404_saying_how_to_start_them(embedder):
    with ThreadServer(create_app(embedder)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
        assert response.status_code == 404
        assert "--rerank-model" in response.json()["error"]["message"]
        assert client.post("/v2/rerank", json={"query": "q", "documents": ["d"]}).status_code == 404
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


# --- auth ---------------------------------------------------------------------------------------


def test_an_api_key_guards_every_route_but_health(embedder, reranker):
    app = create_app(embedder, reranker, api_key="s3cret")
    with ThreadServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            denied = client.post("/v1/embeddings", json={"input": "x"}, headers=headers)
            assert denied.status_code == 401
            assert denied.json()["error"]["code"] == "invalid_api_key"
            assert client.get("/metrics", headers=headers).status_code == 401
            assert client.post("/v2/rerank", json={}, headers=headers).json().keys() == {"message"}
            assert client.post("/api/embed", json={}, headers=headers).json().keys() == {"error"}
            assert client.get("/nowhere", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/embeddings", json={"input": "x"}, headers=good).status_code == 200
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["d"]}, headers=good).status_code == 200


# --- concurrency, overload, disconnects ----------------------------------------------------------


def _mixed_requests(n: int) -> list[tuple[str, dict]]:
    """Embeddings of 1–6 texts (documents and queries, some with dimensions) and reranks of 1–7 documents."""
    requests = []
    for i in range(n):
        texts = [f"request {i} text {j}: " + "lorem ipsum " * ((i * 7 + j * 3) % 40) for j in range(1 + i % 6)]
        if i % 3 == 2:
            docs = [f"document {j} for request {i} " + "dolor " * ((i + j) % 25) for j in range(1 + i % 7)]
            requests.append(("/v1/rerank", {"query": f"query {i % 4}", "documents": docs}))
        elif i % 3 == 1:
            requests.append(("/v1/embeddings", {"input": texts, "input_type": "query", "dimensions": 64}))
        else:
            requests.append(("/v1/embeddings", {"input": texts}))
    return requests


def _expected(path: str, body: dict, reference, reference_reranker) -> np.ndarray:
    if path == "/v1/rerank":
        return reference_reranker.score(body["query"], body["documents"])
    return reference.encode(body["input"], prompt_name=body.get("input_type"), dim=body.get("dimensions"))


def _check(path: str, body: dict, answer: dict, expected: np.ndarray) -> None:
    if path == "/v1/rerank":
        got = {r["index"]: r["relevance_score"] for r in answer["results"]}
        assert sorted(got) == list(range(len(body["documents"])))
        assert np.abs(np.array([got[i] for i in range(len(got))]) - expected).max() <= 1e-6
    else:
        assert [d["index"] for d in answer["data"]] == list(range(len(body["input"])))
        assert_same_vectors([d["embedding"] for d in answer["data"]], expected)


def test_48_concurrent_mixed_callers_each_get_their_own_results_in_order(live, reference, reference_reranker):
    requests = _mixed_requests(48)
    expected = [_expected(path, body, reference, reference_reranker) for path, body in requests]

    async def main():
        async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
            return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))

    responses = asyncio.run(asyncio.wait_for(main(), 300))
    for (path, body), response, want in zip(requests, responses, expected):
        assert response.status_code == 200, response.text
        _check(path, body, response.json(), want)


def test_a_tiny_queue_answers_429_with_retry_after_and_retries_get_everything(embedder, reranker, reference,
                                                                              reference_reranker):
    requests = _mixed_requests(32)
    expected = [_expected(path, body, reference, reference_reranker) for path, body in requests]
    held = HeldEmbedder(embedder)       # the first embedding batch waits until a request has been refused
    app = create_app(held, reranker, limits=Limits(max_queue_tokens=1200, max_batch_tokens=400))
    refusals = []

    async def call(client, path, body):
        for _ in range(200):
            response = await client.post(path, json=body)
            if response.status_code != 429:
                return response
            refusals.append((path, response))
            held.release.set()
            await asyncio.sleep(min(float(response.headers["Retry-After"]), 1.0) * 0.1)
        raise AssertionError("never admitted")

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(call(client, path, body) for path, body in requests))

    with ThreadServer(app) as server:
        responses = asyncio.run(asyncio.wait_for(main(server.url), 300))
        metrics = httpx.get(f"{server.url}/metrics").text
    assert refusals, "the queue never filled"
    for path, refused in refusals:
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == (429 if path == "/v1/rerank" else "rate_limit_exceeded")
    for (path, body), response, want in zip(requests, responses, expected):
        assert response.status_code == 200, response.text
        _check(path, body, response.json(), want)
    # Nothing lost, nothing decoded twice: the engine saw exactly the admitted inputs.
    n_embedded = sum(len(b["input"]) for p, b in requests if p == "/v1/embeddings")
    n_ranked = sum(len(b["documents"]) for p, b in requests if p == "/v1/rerank")
    assert f'qwen3_gguf_decoded_inputs_total{{model="embedding"}} {float(n_embedded)}' in metrics
    assert f'qwen3_gguf_decoded_inputs_total{{model="reranker"}} {float(n_ranked)}' in metrics
    assert "qwen3_gguf_requests_total{route=\"/v1/embeddings\",status=\"429\"}" in metrics


DISCONNECTED = 'qwen3_gguf_requests_total{route="/v1/embeddings",status="499"}'


class HeldEmbedder:
    """The real Embedder, whose first encode waits until the test lets it go."""

    def __init__(self, embedder):
        self._embedder = embedder
        self.entered = threading.Event()
        self.release = threading.Event()
        self.encoded: list[str] = []

    def __getattr__(self, name):
        return getattr(self._embedder, name)

    def encode(self, texts, **options):
        self.entered.set()
        assert self.release.wait(30)
        self.encoded.extend(texts)
        return self._embedder.encode(texts, **options)


def test_a_disconnected_clients_inputs_are_not_decoded(embedder):
    held = HeldEmbedder(embedder)
    with ThreadServer(create_app(held)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/v1/embeddings", json={"input": ["the first request"]})
            assert held.entered.wait(30)
            with pytest.raises(httpx.ReadTimeout):  # this client gives up and closes its connection
                httpx.post(f"{server.url}/v1/embeddings", json={"input": ["gone 1", "gone 2", "gone 3"]}, timeout=0.5)
            deadline = time.monotonic() + 120  # until the server has seen the disconnect
            while DISCONNECTED not in client.get("/metrics").text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            held.release.set()
            assert first.result(30).status_code == 200
        after = client.post("/v1/embeddings", json={"input": ["after"]})
        assert after.status_code == 200
        metrics = client.get("/metrics").text
    assert held.encoded == ["the first request", "after"]
    assert 'qwen3_gguf_dropped_inputs_total{model="embedding"} 3.0' in metrics
    assert 'qwen3_gguf_decoded_inputs_total{model="embedding"} 2.0' in metrics


def test_health_is_503_until_the_models_are_loaded(embedding_gguf_256):
    go = threading.Event()
    loaded = []

    def load():
        assert go.wait(30)
        model = Embedder(embedding_gguf_256, device="cpu")
        loaded.append(model)
        return model, None

    with ThreadServer(create_app(load=load)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/health").status_code == 503
        waiting = client.post("/v1/embeddings", json={"input": "x"})
        assert waiting.status_code == 503 and waiting.headers["Retry-After"] == "1"
        go.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200
    assert len(loaded) == 1
