"""The server through the client libraries people point at it (no mocks, no network), and its
OpenAPI document held to the live server by schemathesis.

- huggingface_hub's InferenceClient (TEI's client) posts to the root route `/`;
- LangChain's OpenAIEmbeddings, on its default path, tokenizes with tiktoken and sends token
  ids: refused unless the server runs with accept_token_ids, and then embedded as given;
- the `<model>-query` id gives OpenAI-only clients the instructed query vector.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402
from server_harness import ServeProcess, ThreadServer  # noqa: E402

from qwen3_gguf import Embedder, Reranker  # noqa: E402
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION  # noqa: E402
from qwen3_gguf.server import create_app  # noqa: E402

pytestmark = pytest.mark.slow

MAX_TOKENS = 512
TEXTS = ["GGUF is the file format of llama.cpp.", "def add(a, b):\n    return a + b"]
QUERY = "which file format does llama.cpp use?"


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
def live(embedder, reranker):
    """The server as users get it: token ids refused."""
    with ThreadServer(create_app(embedder, reranker)) as server:
        yield server


@pytest.fixture(scope="module")
def accepting(embedder):
    with ThreadServer(create_app(embedder, accept_token_ids=True)) as server:
        yield server


def cosines(got, expected) -> np.ndarray:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)


def assert_same_vectors(got, expected, min_cos=0.99999):
    assert np.asarray(got).shape == np.asarray(expected).shape
    assert cosines(got, expected).min() >= min_cos


# --- huggingface_hub.InferenceClient: TEI's root route ------------------------------------------


def test_inference_client_feature_extraction_equals_encode(live, reference):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=live.url)
    for text in TEXTS:
        assert_same_vectors(client.feature_extraction(text), reference.encode([text]))
    query = client.feature_extraction(QUERY, prompt_name="query")
    assert_same_vectors(query, reference.encode([QUERY], prompt_name="query"))


def test_root_route_ranks_teis_rerank_form_and_refuses_in_teis_shape(live, reranker):
    expected = reranker.score(QUERY, TEXTS)
    ranked = httpx.post(f"{live.url}/", json={"query": QUERY, "texts": TEXTS}, timeout=60).json()
    assert [r["index"] for r in ranked] == list(np.argsort(-expected, kind="stable"))
    assert max(abs(r["score"] - expected[r["index"]]) for r in ranked) <= 1e-6
    empty = httpx.post(f"{live.url}/", json={"inputs": ""}, timeout=60)
    assert empty.status_code == 400
    assert empty.json() == {"error": "'inputs[0]' is an empty string; there is nothing to embed",
                            "error_type": "Validation"}
    got = httpx.get(f"{live.url}/", timeout=60)
    assert got.status_code == 405 and got.json() == {"error": "GET is not allowed on /", "error_type": "Validation"}


# --- token ids: LangChain's OpenAIEmbeddings on its default path --------------------------------


@pytest.fixture
def local_cl100k(monkeypatch):
    """A tiktoken encoding under cl100k's name, built here (byte-level ranks only, so its ids are
    not Qwen3's), registered where `tiktoken.get_encoding` looks first: langchain-openai's default
    path then works offline and sends these ids."""
    import tiktoken
    import tiktoken.registry

    encoding = tiktoken.Encoding(
        name="cl100k_base",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "cl100k_base", encoding)
    return encoding


def langchain_embeddings(url: str, **options):
    from langchain_openai import OpenAIEmbeddings

    return OpenAIEmbeddings(base_url=f"{url}/v1", api_key="unused", max_retries=0, **options)


def test_langchain_default_token_ids_are_refused_saying_why(live, local_cl100k):
    import openai

    embeddings = langchain_embeddings(live.url, model="qwen3")
    assert embeddings.check_embedding_ctx_length  # the default path: tiktoken ids are sent
    with pytest.raises(openai.BadRequestError) as refused:
        embeddings.embed_documents(TEXTS)
    assert refused.value.status_code == 400
    error = refused.value.body
    assert error["code"] == "token_ids_not_accepted" and error["param"] == "input"
    assert error["message"].startswith("'input' holds token ids, which this server would read as Qwen3 token ids")
    assert "check_embedding_ctx_length=False" in error["message"] and "--accept-token-ids" in error["message"]


def test_langchain_with_text_equals_encode(live, reference):
    embeddings = langchain_embeddings(live.url, model="qwen3", check_embedding_ctx_length=False)
    assert_same_vectors(embeddings.embed_documents(TEXTS), reference.encode(TEXTS))


def test_accepted_token_ids_are_embedded_as_given(accepting, reference, local_cl100k):
    embeddings = langchain_embeddings(accepting.url, model="qwen3")
    got = embeddings.embed_documents(TEXTS)
    ids = [local_cl100k.encode_ordinary(text) for text in TEXTS]
    assert_same_vectors(got, reference.encode_tokens(ids))
    # ...which is why they are refused by default: read as Qwen3 ids they are other text.
    assert cosines(got, reference.encode(TEXTS)).max() < 0.99


@pytest.mark.parametrize(("path", "key"), [("/v1/embeddings", "input"), ("/embeddings", "input"),
                                           ("/embed", "inputs"), ("/", "inputs")])
def test_token_ids_are_refused_in_each_familys_shape(live, path, key):
    for ids in ([9707, 1879], [[9707], [1879, 0]]):
        response = httpx.post(f"{live.url}{path}", json={key: ids}, timeout=60)
        assert response.status_code == 400
        body = response.json()
        message = body["error"]["message"] if key == "input" else body["error"]
        assert message.startswith(f"'{key}' holds token ids, which this server would read as Qwen3 token ids")
        if key == "inputs":
            assert body["error_type"] == "Validation"


def test_serve_accept_token_ids_option(embedding_gguf_256, reference):
    ids = reference.tokenize(TEXTS[0])[0]
    with ServeProcess("-m", str(embedding_gguf_256), "--accept-token-ids") as server:
        response = httpx.post(f"{server.url}/v1/embeddings", json={"input": [ids]}, timeout=60)
        assert response.status_code == 200
        assert_same_vectors([response.json()["data"][0]["embedding"]], reference.encode(TEXTS[:1]))


# --- the query model id ---------------------------------------------------------------------------


def test_query_model_id_embeds_instructed_queries(live, reference, embedder):
    query_id = embedder.model_file.path.stem + "-query"
    listed = httpx.get(f"{live.url}/v1/models", timeout=60).json()["data"]
    assert {"id": query_id, "query_instruction": DEFAULT_INSTRUCTION}.items() <= listed[1].items()
    queries = langchain_embeddings(live.url, model=query_id, check_embedding_ctx_length=False)
    expected = reference.encode([QUERY], instruction=DEFAULT_INSTRUCTION)
    assert_same_vectors([queries.embed_query(QUERY)], expected)
    documents = langchain_embeddings(live.url, model=embedder.model_file.path.stem, check_embedding_ctx_length=False)
    assert_same_vectors([documents.embed_query(QUERY)], reference.encode([QUERY]))
    assert cosines([documents.embed_query(QUERY)], expected)[0] < 0.99
    # A request may still say what it sends.
    explicit = httpx.post(f"{live.url}/v1/embeddings", timeout=60,
                          json={"model": query_id, "input": QUERY, "input_type": "document"}).json()
    assert_same_vectors([explicit["data"][0]["embedding"]], reference.encode([QUERY]))
    own = httpx.post(f"{live.url}/v1/embeddings", timeout=60,
                     json={"model": query_id, "input": QUERY, "instruction": "Find code"}).json()
    assert_same_vectors([own["data"][0]["embedding"]], reference.encode([QUERY], instruction="Find code"))


def test_llama_index_openai_like_query_model_id(live, reference, embedder):
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    name = embedder.model_file.path.stem
    queries = OpenAILikeEmbedding(model_name=name + "-query", api_base=f"{live.url}/v1", api_key="unused")
    documents = OpenAILikeEmbedding(model_name=name, api_base=f"{live.url}/v1", api_key="unused")
    assert_same_vectors([queries.get_query_embedding(QUERY)], reference.encode([QUERY], prompt_name="query"))
    assert_same_vectors([documents.get_text_embedding(TEXTS[0])], reference.encode(TEXTS[:1]))


def test_query_model_id_with_token_ids_is_refused(accepting, embedder):
    query_id = embedder.model_file.path.stem + "-query"
    response = httpx.post(f"{accepting.url}/v1/embeddings", json={"model": query_id, "input": [9707]}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("token-id inputs are embedded as given")


# --- the OpenAPI document, held to the live server ----------------------------------------------

EXAMPLES_PER_OPERATION = 12


def test_openapi_document_describes_every_route(live):
    from qwen3_gguf.server.app import _ROUTE_NAMES

    document = httpx.get(f"{live.url}/openapi.json", timeout=60).json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == _ROUTE_NAMES
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path != "/health":
                assert {"400", "413", "429", "503"} <= set(operation["responses"]), path


def test_schemathesis_finds_no_5xx_and_every_answer_conforms(live):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    from qwen3_gguf.server.app import _ROUTE_NAMES

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_dict(httpx.get(f"{live.url}/openapi.json", timeout=60).json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} == _ROUTE_NAMES
    for operation in operations:
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # a body to break; a GET here takes nothing
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def conforms(case):
                case.call_and_validate(base_url=live.url, checks=checks, timeout=60)

            conforms()
