"""The framework classes (qwen3_gguf.integrations) inside each framework's own retrieval path, with the
real libraries: stored vectors are `Embedder.encode`'s (and transformers'), the query vector is the
instructed one, the reranker orders as `Reranker.score` (and transformers' yes/no recipe)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import numpy as np
import pytest
from hub_cache import offline_hub
from tolerances import EMBEDDING_FLOORS, RERANK_TOLERANCE

from qwen3_gguf import Embedder, Reranker, UserError
from qwen3_gguf.prompts import DEFAULT_INSTRUCTION

# The framework classes give Embedder's own numbers: the floor only allows for float32 → float64 lists.
SAME = 0.99999
DOCUMENTS = [
    "GGUF is the file format of llama.cpp: one file holds the weights and the tokenizer.",
    "Tides are caused mainly by the Moon's gravity pulling on the oceans.",
    "def add(a, b):\n    return a + b\n",                   # newlines kept: no framework may flatten them
    "東京の桜は三月下旬から四月上旬に見ごろを迎えます。",
    "Quantization stores each weight in fewer bits, trading accuracy for size.",
    "Paris is the capital of France.",
]
QUERY = "how do I make a model file smaller?"
CUSTOM_INSTRUCTION = "Find code that answers the question"
DIM = 64
FRAMEWORKS = ("langchain", "llamaindex", "haystack", "chroma")
RERANKING_FRAMEWORKS = ("langchain", "llamaindex", "haystack")
FRAMEWORK_PACKAGES = {"langchain": "langchain_core", "llamaindex": "llama_index", "haystack": "haystack",
                      "chroma": "chromadb"}


def cosines(got, want) -> np.ndarray:
    """Row by row cosine of two lists of vectors."""
    got, want = np.atleast_2d(np.asarray(got, dtype=np.float64)), np.atleast_2d(np.asarray(want, dtype=np.float64))
    assert got.shape == want.shape, (got.shape, want.shape)
    return np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


@pytest.fixture(scope="module")
def expected(embedding_gguf_256, reranker_wide_tied_gguf, embedding_oracle_256, reranker_oracle_wide_tied):
    """What every framework must give: Embedder's and Reranker's numbers, and transformers' beside them."""
    with (Embedder(embedding_gguf_256, device="cpu") as embedder,
          Reranker(reranker_wide_tied_gguf, device="cpu") as reranker):
        scores = reranker.score(QUERY, DOCUMENTS)
        want = dict(
            documents=embedder.encode(DOCUMENTS),
            query=embedder.encode(QUERY, prompt_name="query"),
            plain_query=embedder.encode(QUERY),
            scores=scores,
            ranking=[DOCUMENTS[i] for i in np.argsort(-scores, kind="stable")],
            custom_documents=embedder.encode(DOCUMENTS, dim=DIM),
            custom_query=embedder.encode(QUERY, instruction=CUSTOM_INSTRUCTION, dim=DIM),
            custom_scores=reranker.score(QUERY, DOCUMENTS, instruction=CUSTOM_INSTRUCTION),
        )
    np.testing.assert_array_less(EMBEDDING_FLOORS["f32"], cosines(want["documents"],
                                                                  embedding_oracle_256.embed(DOCUMENTS)))
    np.testing.assert_array_less(EMBEDDING_FLOORS["f32"], cosines(
        want["query"], embedding_oracle_256.embed([QUERY], instruction=DEFAULT_INSTRUCTION)))
    np.testing.assert_allclose(scores, reranker_oracle_wide_tied.score(QUERY, DOCUMENTS), atol=RERANK_TOLERANCE)
    # The fixture can tell the paths apart: scores spread, and an uninstructed query is another vector.
    assert scores.min() < 0.5 < 0.8 < scores.max()
    assert cosines(want["query"], want["plain_query"])[0] < 0.9
    return want


def assert_stored_documents(vectors, expected) -> None:
    np.testing.assert_array_less(SAME, cosines(vectors, expected["documents"]))


def assert_the_query_vector(vector, expected) -> None:
    """The instructed query encoding, not the plain one."""
    assert cosines(vector, expected["query"])[0] >= SAME
    assert cosines(vector, expected["plain_query"])[0] < 0.9


def assert_scores_of_the_instructed_query(texts, scores, expected) -> None:
    """Retrieval scores (cosine similarities) of `texts` are those of the instructed query vector."""
    similarity = dict(zip(DOCUMENTS, expected["documents"] @ expected["query"]))
    plain = dict(zip(DOCUMENTS, expected["documents"] @ expected["plain_query"]))
    np.testing.assert_allclose(scores, [similarity[t] for t in texts], atol=1e-5)
    assert max(abs(s - plain[t]) for t, s in zip(texts, scores)) > 0.05
    assert list(scores) == sorted(scores, reverse=True)


def assert_reranked(texts, scores, expected, top_n: int | None = None) -> None:
    """The order and scores of Reranker.score."""
    assert list(texts) == expected["ranking"][:top_n]
    by_text = dict(zip(DOCUMENTS, expected["scores"]))
    np.testing.assert_allclose(scores, [by_text[t] for t in texts], atol=1e-6)


# --- each framework's own retrieval path ----------------------------------------------------


def test_langchain_in_memory_store_and_compression_retriever(embedding_gguf_256, reranker_wide_tied_gguf, expected):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.vectorstores import InMemoryVectorStore

    from qwen3_gguf.integrations.langchain import Qwen3Embeddings, Qwen3Reranker

    embeddings = Qwen3Embeddings(model=embedding_gguf_256, device="cpu")
    ids = [f"doc-{i}" for i in range(len(DOCUMENTS))]
    store = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings, ids=ids)
    assert_stored_documents([store.store[i]["vector"] for i in ids], expected)
    hits = store.similarity_search_with_score(QUERY, k=len(DOCUMENTS))
    assert_scores_of_the_instructed_query([d.page_content for d, _ in hits], [s for _, s in hits], expected)
    assert_the_query_vector(embeddings.embed_query(QUERY), expected)

    base = store.as_retriever(search_kwargs={"k": len(DOCUMENTS)})
    reranker = Qwen3Reranker(model=reranker_wide_tied_gguf, device="cpu", top_n=None)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=base)
    ranked = retriever.invoke(QUERY)
    assert [d.page_content for d, _ in hits] != expected["ranking"]   # the reranker changed the order
    assert_reranked([d.page_content for d in ranked], [d.metadata["relevance_score"] for d in ranked], expected)
    assert {d.id for d in ranked} == set(ids)

    default_top_n = ContextualCompressionRetriever(
        base_compressor=Qwen3Reranker(model=reranker_wide_tied_gguf, device="cpu"), base_retriever=base)
    assert [d.page_content for d in default_top_n.invoke(QUERY)] == expected["ranking"][:3]


def test_langchain_async_methods_take_turns_on_one_model(embedding_gguf_256, reranker_wide_tied_gguf, expected):
    from langchain_core.documents import Document

    from qwen3_gguf.integrations.langchain import Qwen3Embeddings, Qwen3Reranker

    embeddings = Qwen3Embeddings(model=embedding_gguf_256, device="cpu")
    reranker = Qwen3Reranker(model=reranker_wide_tied_gguf, device="cpu", top_n=2)

    async def together():
        return await asyncio.gather(
            embeddings.aembed_documents(DOCUMENTS), embeddings.aembed_query(QUERY),
            embeddings.aembed_documents(DOCUMENTS[::-1]), embeddings.aembed_query(QUERY),
            reranker.acompress_documents([Document(page_content=t) for t in DOCUMENTS], QUERY))

    documents, query, reversed_documents, query_again, ranked = asyncio.run(together())
    assert_stored_documents(documents, expected)
    assert_stored_documents(reversed_documents[::-1], expected)
    assert_the_query_vector(query, expected)
    assert_the_query_vector(query_again, expected)
    assert_reranked([d.page_content for d in ranked], [d.metadata["relevance_score"] for d in ranked], expected, 2)
    assert embeddings.embed_documents([]) == []


def test_llamaindex_vector_store_index_and_rerank(embedding_gguf_256, reranker_wide_tied_gguf, expected):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from qwen3_gguf.integrations.llamaindex import Qwen3Embedding, Qwen3Rerank

    embed_model = Qwen3Embedding(model=embedding_gguf_256, device="cpu")
    nodes = [TextNode(text=text, id_=f"node-{i}") for i, text in enumerate(DOCUMENTS)]
    index = VectorStoreIndex(nodes, embed_model=embed_model)
    stored = index.vector_store.data.embedding_dict
    assert_stored_documents([stored[n.id_] for n in nodes], expected)
    retriever = index.as_retriever(similarity_top_k=len(DOCUMENTS))
    hits = retriever.retrieve(QUERY)
    assert_scores_of_the_instructed_query([h.node.get_content() for h in hits], [h.score for h in hits], expected)
    assert_the_query_vector(embed_model.get_query_embedding(QUERY), expected)
    assert_the_query_vector(asyncio.run(embed_model.aget_query_embedding(QUERY)), expected)
    assert_stored_documents(asyncio.run(embed_model.aget_text_embedding_batch(DOCUMENTS)), expected)

    rerank = Qwen3Rerank(model=reranker_wide_tied_gguf, device="cpu", top_n=None)
    ranked = rerank.postprocess_nodes(hits, query_str=QUERY)
    assert_reranked([n.node.get_content() for n in ranked], [n.score for n in ranked], expected)
    two = asyncio.run(Qwen3Rerank(model=reranker_wide_tied_gguf, device="cpu").apostprocess_nodes(
        asyncio.run(retriever.aretrieve(QUERY)), query_str=QUERY))
    assert_reranked([n.node.get_content() for n in two], [n.score for n in two], expected, top_n=2)
    with pytest.raises(UserError, match="^Qwen3Rerank needs the query"):
        rerank.postprocess_nodes(hits)


def test_haystack_pipeline_with_in_memory_document_store(embedding_gguf_256, reranker_wide_tied_gguf, expected):
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
    from haystack.components.writers import DocumentWriter
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    from qwen3_gguf.integrations.haystack import Qwen3DocumentEmbedder, Qwen3Ranker, Qwen3TextEmbedder

    store = InMemoryDocumentStore()
    indexing = Pipeline()
    indexing.add_component("embedder", Qwen3DocumentEmbedder(model=embedding_gguf_256, device="cpu"))
    indexing.add_component("writer", DocumentWriter(store))
    indexing.connect("embedder.documents", "writer.documents")
    indexing.run({"embedder": {"documents": [Document(id=f"doc-{i}", content=t) for i, t in enumerate(DOCUMENTS)]}})
    stored = {d.id: d.embedding for d in store.filter_documents()}
    assert_stored_documents([stored[f"doc-{i}"] for i in range(len(DOCUMENTS))], expected)

    query = Pipeline()
    query.add_component("embedder", Qwen3TextEmbedder(model=embedding_gguf_256, device="cpu"))
    query.add_component("retriever", InMemoryEmbeddingRetriever(store, top_k=len(DOCUMENTS)))
    query.add_component("ranker", Qwen3Ranker(model=reranker_wide_tied_gguf, device="cpu", top_k=None))
    query.connect("embedder.embedding", "retriever.query_embedding")
    query.connect("retriever.documents", "ranker.documents")
    result = query.run({"embedder": {"text": QUERY}, "ranker": {"query": QUERY}},
                       include_outputs_from={"embedder", "retriever"})
    assert_the_query_vector(result["embedder"]["embedding"], expected)
    hits = result["retriever"]["documents"]
    assert_scores_of_the_instructed_query([d.content for d in hits], [d.score for d in hits], expected)
    ranked = result["ranker"]["documents"]
    assert_reranked([d.content for d in ranked], [d.score for d in ranked], expected)

    # The pipeline serializes with the components' settings and loads back (as a trusted module).
    loaded = Pipeline.loads(query.dumps(), allowed_modules=["qwen3_gguf.integrations.haystack"])
    assert loaded.get_component("ranker").model == str(reranker_wide_tied_gguf)
    assert loaded.get_component("ranker").top_k is None
    assert loaded.get_component("embedder").instruction == DEFAULT_INSTRUCTION


def test_chroma_ephemeral_client(embedding_gguf_256, expected):
    import chromadb

    from qwen3_gguf.integrations.chroma import Qwen3EmbeddingFunction

    client = chromadb.EphemeralClient()
    name = f"notes-{uuid.uuid4().hex}"
    function = Qwen3EmbeddingFunction(model=embedding_gguf_256, device="cpu")
    collection = client.create_collection(name, embedding_function=function)
    ids = [f"doc-{i}" for i in range(len(DOCUMENTS))]
    collection.add(ids=ids, documents=DOCUMENTS)
    stored = collection.get(ids=ids, include=["embeddings"])
    assert_stored_documents([stored["embeddings"][stored["ids"].index(i)] for i in ids], expected)
    assert collection.configuration["hnsw"]["space"] == "cosine"
    hits = collection.query(query_texts=[QUERY], n_results=len(DOCUMENTS))
    assert_scores_of_the_instructed_query(hits["documents"][0], [1 - d for d in hits["distances"][0]], expected)
    assert_the_query_vector(function.embed_query([QUERY])[0], expected)

    # The collection remembers its function by name and settings: a second client handle rebuilds it.
    reopened = client.get_collection(name)
    again = reopened.query(query_texts=[QUERY], n_results=len(DOCUMENTS))
    assert again["documents"] == hits["documents"]
    np.testing.assert_allclose(again["distances"], hits["distances"], atol=1e-6)


# --- the settings every class takes --------------------------------------------------------


def embed_with(framework: str, model, **settings) -> tuple[list, list]:
    """(document vectors, query vector) of DOCUMENTS and QUERY through `framework`'s classes."""
    if framework == "langchain":
        from qwen3_gguf.integrations.langchain import Qwen3Embeddings

        embeddings = Qwen3Embeddings(model=model, device="cpu", **settings)
        return embeddings.embed_documents(DOCUMENTS), embeddings.embed_query(QUERY)
    if framework == "llamaindex":
        from qwen3_gguf.integrations.llamaindex import Qwen3Embedding

        embed_model = Qwen3Embedding(model=model, device="cpu", **settings)
        return embed_model.get_text_embedding_batch(DOCUMENTS), embed_model.get_query_embedding(QUERY)
    if framework == "haystack":
        from haystack import Document

        from qwen3_gguf.integrations.haystack import Qwen3DocumentEmbedder, Qwen3TextEmbedder

        documents = Qwen3DocumentEmbedder(model=model, device="cpu", dim=settings.get("dim")).run(
            [Document(content=t) for t in DOCUMENTS])["documents"]
        return [d.embedding for d in documents], Qwen3TextEmbedder(model=model, device="cpu", **settings).run(
            QUERY)["embedding"]
    from qwen3_gguf.integrations.chroma import Qwen3EmbeddingFunction

    function = Qwen3EmbeddingFunction(model=model, device="cpu", **settings)
    return function(DOCUMENTS), function.embed_query([QUERY])[0]


def rank_with(framework: str, model, **settings) -> tuple[list[str], list[float]]:
    """(texts, scores) of DOCUMENTS ranked for QUERY by `framework`'s reranker, all kept."""
    if framework == "langchain":
        from langchain_core.documents import Document

        from qwen3_gguf.integrations.langchain import Qwen3Reranker

        ranked = Qwen3Reranker(model=model, device="cpu", top_n=None, **settings).compress_documents(
            [Document(page_content=t) for t in DOCUMENTS], QUERY)
        return [d.page_content for d in ranked], [d.metadata["relevance_score"] for d in ranked]
    if framework == "llamaindex":
        from llama_index.core.schema import NodeWithScore, TextNode

        from qwen3_gguf.integrations.llamaindex import Qwen3Rerank

        ranked = Qwen3Rerank(model=model, device="cpu", top_n=None, **settings).postprocess_nodes(
            [NodeWithScore(node=TextNode(text=t)) for t in DOCUMENTS], query_str=QUERY)
        return [n.node.get_content() for n in ranked], [n.score for n in ranked]
    from haystack import Document

    from qwen3_gguf.integrations.haystack import Qwen3Ranker

    ranked = Qwen3Ranker(model=model, device="cpu", top_k=None, **settings).run(
        QUERY, [Document(content=t) for t in DOCUMENTS])["documents"]
    return [d.content for d in ranked], [d.score for d in ranked]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dim_and_instruction_are_honoured(framework, embedding_gguf_256, expected):
    documents, query = embed_with(framework, embedding_gguf_256, dim=DIM, instruction=CUSTOM_INSTRUCTION)
    assert np.shape(documents) == (len(DOCUMENTS), DIM) and np.shape(query) == (DIM,)
    np.testing.assert_array_less(SAME, cosines(documents, expected["custom_documents"]))
    assert cosines(query, expected["custom_query"])[0] >= SAME
    assert cosines(query, expected["query"][:DIM])[0] < 0.9    # not the default instruction's vector


@pytest.mark.parametrize("framework", RERANKING_FRAMEWORKS)
def test_reranker_instruction_is_honoured(framework, reranker_wide_tied_gguf, expected):
    texts, scores = rank_with(framework, reranker_wide_tied_gguf, instruction=CUSTOM_INSTRUCTION)
    by_text = dict(zip(DOCUMENTS, expected["custom_scores"]))
    np.testing.assert_allclose(scores, [by_text[t] for t in texts], atol=1e-6)
    assert list(scores) == sorted(scores, reverse=True)
    assert np.max(np.abs(expected["custom_scores"] - expected["scores"])) > 0.05


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("settings, message", [
    ({"dim": 16}, "^--dim 16 is outside 32…256"),
    ({"dim": 512}, "^--dim 512 is outside 32…256"),
    ({"instruction": " "}, "^the instruction is empty$"),
])
def test_bad_settings_are_refused(framework, settings, message, embedding_gguf_256):
    with pytest.raises(UserError, match=message):
        embed_with(framework, embedding_gguf_256, **settings)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_reranker_is_not_an_embedding_model(framework, reranker_wide_tied_gguf):
    with pytest.raises(UserError, match="reranker"):
        embed_with(framework, reranker_wide_tied_gguf)


def test_catalog_names_resolve_as_the_command_line_does(monkeypatch, tmp_path, embedding_gguf_256,
                                                        reranker_wide_tied_gguf, expected):
    hub = offline_hub(monkeypatch, tmp_path / "hf" / "hub")
    hub.add("Qwen/Qwen3-Embedding-0.6B-GGUF", "Qwen3-Embedding-0.6B-Q8_0.gguf", embedding_gguf_256)
    hub.add("ggml-org/Qwen3-Reranker-0.6B-Q8_0-GGUF", "qwen3-reranker-0.6b-q8_0.gguf", reranker_wide_tied_gguf)
    for framework in FRAMEWORKS:
        documents, query = embed_with(framework, "qwen3-embedding-0.6b")
        assert_stored_documents(documents, expected)
        assert_the_query_vector(query, expected)
    for framework in RERANKING_FRAMEWORKS:
        assert_reranked(*rank_with(framework, "qwen3-reranker-0.6b"), expected)
    with pytest.raises(UserError, match="^'qwen3-embeding-0.6b' is neither a GGUF file nor a model in the catalog "
                                        r"\(did you mean qwen3-embedding-0.6b\?"):
        embed_with("langchain", "qwen3-embeding-0.6b")


# --- the extras -----------------------------------------------------------------------------


def import_in_fresh_python(module: str, blocked: list[str]) -> subprocess.CompletedProcess:
    """Import qwen3_gguf.integrations.`module` in a new interpreter where the `blocked` packages cannot be imported."""
    code = f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\nimport qwen3_gguf.integrations.{module}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_module_imports_without_the_other_frameworks(framework):
    others = [package for name, package in FRAMEWORK_PACKAGES.items() if name != framework]
    result = import_in_fresh_python(framework, others)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_missing_extra_names_the_install(framework):
    package = FRAMEWORK_PACKAGES[framework]
    result = import_in_fresh_python(framework, [package])
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"qwen3_gguf.integrations.shared.MissingExtra: qwen3_gguf.integrations.{framework} needs {package}, "
        f"which is not installed: pip install 'qwen3-gguf[{framework}]'")


def test_the_missing_extra_error_is_an_import_error_and_a_user_error(monkeypatch):
    for name in ["chromadb", *(name for name in sys.modules if name.startswith("chromadb."))]:
        monkeypatch.setitem(sys.modules, name, None)     # submodules too: an earlier test may have imported them
    monkeypatch.delitem(sys.modules, "qwen3_gguf.integrations.chroma", raising=False)
    with pytest.raises(ImportError) as caught:
        import qwen3_gguf.integrations.chroma  # noqa: F401
    assert isinstance(caught.value, UserError)
    assert str(caught.value) == ("qwen3_gguf.integrations.chroma needs chromadb, which is not installed: "
                                 "pip install 'qwen3-gguf[chroma]'")
