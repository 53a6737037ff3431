"""Rerank APIs: llama.cpp/Jina (`/v1/rerank`, `/rerank`, `/v1/reranking`; TEI's form when the
body has `texts`) and Cohere (`/v2/rerank`). `instruction` is Qwen3's extension.

An over-long document, as each reference answers it: llama.cpp's server refuses it (400 here,
unless `"truncate": true`), TEI's `truncate` defaults to false (413), Cohere cuts documents to
`max_tokens_per_doc` by default (here: to the model's context)."""

from __future__ import annotations

import uuid

import numpy as np
from starlette.requests import Request
from starlette.routing import Route

from .errors import TEI_OVER_LONG_STATUS, ApiError, cohere_body, llama_cpp_body, tei_body
from .parsing import field, positive_int, read_json, text_list

PATHS = ("/v1/rerank", "/rerank", "/v1/reranking", "/v2/rerank")


def routes(endpoint) -> list[Route]:
    return [
        *(Route(path, endpoint(rerank, llama_cpp_body), methods=["POST"]) for path in PATHS[:3]),
        Route("/v2/rerank", endpoint(cohere_rerank, cohere_body), methods=["POST"]),
    ]


async def rerank(request: Request, state):
    body = await read_json(request, state.limits.max_request_bytes)
    if "texts" in body:
        try:
            return await tei_rerank(request, state, body)
        except ApiError as error:
            error.family = tei_body
            raise
    service = state.rerank_service()
    query = field(body, "query", str)
    documents = text_list(field(body, "documents", list), "documents", max_inputs=state.limits.max_inputs,
                          allow_objects=True)
    top_n = positive_int(body, "top_n", len(documents))
    return_documents = field(body, "return_documents", bool, True)
    result = await service.score(request, query, documents, instruction=field(body, "instruction", str, None),
                                 truncate=field(body, "truncate", bool, False))
    results = _ranked(result.scores, documents, top_n, return_documents)
    return {"model": field(body, "model", str, service.info.id), "object": "list",
            "usage": {"prompt_tokens": result.n_tokens, "total_tokens": result.n_tokens}, "results": results}


async def tei_rerank(request: Request, state, body: dict) -> list:
    """TEI's form: `texts`, `raw_scores` (the yes-vs-no logit), `return_text`; a bare list back."""
    service = state.rerank_service()
    query = field(body, "query", str)
    texts = text_list(field(body, "texts", list), "texts", max_inputs=state.limits.max_inputs)
    top_n = positive_int(body, "top_n", len(texts))
    raw = field(body, "raw_scores", bool, False)
    return_text = field(body, "return_text", bool, False)
    result = await service.score(request, query, texts, instruction=field(body, "instruction", str, None),
                                 truncate=field(body, "truncate", bool, False), field="texts",
                                 over_long_status=TEI_OVER_LONG_STATUS)
    scores = _logits(result.scores) if raw else result.scores
    answer = []
    for i in _best_first(result.scores, top_n):
        item = {"index": i, "score": float(scores[i])}
        if return_text:
            item["text"] = texts[i]
        answer.append(item)
    return answer


async def cohere_rerank(request: Request, state) -> dict:
    body = await read_json(request, state.limits.max_request_bytes)
    service = state.rerank_service()
    query = field(body, "query", str)
    documents = text_list(field(body, "documents", list), "documents", max_inputs=state.limits.max_inputs,
                          allow_objects=True)
    top_n = positive_int(body, "top_n", len(documents))
    positive_int(body, "max_tokens_per_doc")  # accepted; documents are cut to the model's context instead
    return_documents = field(body, "return_documents", bool, False)  # Cohere v1's field
    result = await service.score(request, query, documents, instruction=field(body, "instruction", str, None),
                                 truncate=True)
    results = _ranked(result.scores, documents, top_n, return_documents)
    return {"id": str(uuid.uuid4()), "results": results,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                     "tokens": {"input_tokens": result.n_tokens, "output_tokens": 0}}}


def _ranked(scores: np.ndarray, documents: list[str], top_n: int, return_documents: bool) -> list[dict]:
    """The best `top_n` as {index, relevance_score[, document]}: the llama.cpp/Jina and Cohere shape."""
    results = []
    for i in _best_first(scores, top_n):
        item = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            item["document"] = {"text": documents[i]}
        results.append(item)
    return results


def _best_first(scores: np.ndarray, top_n: int) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")[:top_n]]


def _logits(probabilities: np.ndarray) -> np.ndarray:
    """log P(yes) − log P(no): the reranker's score before the softmax squashes it."""
    p = np.clip(probabilities.astype(np.float64), 1e-30, 1 - 1e-16)
    return np.log(p) - np.log1p(-p)
