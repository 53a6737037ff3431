"""The OpenAPI 3 document served at `/openapi.json`: every route, its request body, its answer
and its errors in the shape of its API family.

Written by hand, as data: the routes read their JSON with `parsing.py` (to name the field at
fault in each family's own error shape), so there are no request models to generate it from,
and a generator would still need every family's error shape spelled out. The test suite holds
this document to the server: a schemathesis run against a live server checks that every
answer conforms to it.
"""

from __future__ import annotations

from .limits import Limits

_STRING = {"type": "string", "minLength": 1}
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer"}}
_VECTOR = {"type": "array", "items": {"type": "number"}}


def _texts(max_inputs: int) -> dict:
    return {"type": "array", "minItems": 1, "maxItems": max_inputs, "items": _STRING}


def _inputs(max_inputs: int) -> dict:
    """Text, texts, token ids or lists of token ids (ids only with --accept-token-ids)."""
    return {"oneOf": [_STRING, _texts(max_inputs), _TOKEN_IDS,
                      {"type": "array", "minItems": 1, "maxItems": max_inputs, "items": _TOKEN_IDS}]}


_QUERY_FIELDS = {
    "input_type": {"type": "string", "enum": ["query", "document"],
                   "description": "Qwen3 extension: 'query' puts the default instruction before each input."},
    "prompt_name": {"type": "string", "enum": ["query", "document"], "description": "As input_type."},
    "instruction": {"type": "string", "minLength": 1, "description": "Qwen3 extension: a query instruction."},
    "dimensions": {"type": "integer", "minimum": 1, "description": "Matryoshka dimension (32 up to the model's)."},
}


def _truncate(default: bool) -> dict:
    return {"truncate": {"type": "boolean", "default": default,
                         "description": "Cut an over-long input to the model's limit instead of refusing it."}}


# Error bodies, one per API family (errors.py makes them).
_ERRORS = {
    "openai": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
    "llama_cpp": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "type"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "type": {"type": "string"}}}}},
    "tei": {"type": "object", "required": ["error", "error_type"],
            "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}}},
    "cohere": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
    "ollama": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
}

_ERROR_STATUSES = {
    "400": "Malformed JSON, a field of the wrong type or value, token ids without --accept-token-ids, "
           "or an over-long input that is not to be truncated.",
    "401": "A valid API key is required (servers started with --api-key).",
    "404": "This server has no model of the kind the route needs.",
    "413": "The body, the number of inputs or the queued tokens are over the server's limits "
           "(and, for TEI, an over-long input that is not to be truncated).",
    "429": "The server is busy; retry after the Retry-After header's seconds.",
    "500": "The server failed on this request; its log says why.",
    "503": "The models are still loading, or the server is shutting down.",
}


def _errors(family: str, *extra: str) -> dict:
    answers = {status: _json(description, {"$ref": f"#/components/schemas/{family}_error"})
               for status, description in _ERROR_STATUSES.items()}
    for status in extra:
        answers[status] = _json("TEI refuses this value (e.g. truncation_direction 'Left').",
                                {"$ref": f"#/components/schemas/{family}_error"})
    answers["499"] = {"description": "The client went away before the answer (nothing is sent)."}
    return answers


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _post(summary: str, family: str, body: dict, answer: dict, *extra_errors: str) -> dict:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": _json("Success.", answer), **_errors(family, *extra_errors)},
    }}


def _get(summary: str, family: str, answer: dict, media_type: str = "application/json") -> dict:
    ok = {"description": "Success.", "content": {media_type: {"schema": answer}}}
    return {"get": {"summary": summary, "responses": {"200": ok, **_errors(family)}}}


def document(limits: Limits) -> dict:
    """The OpenAPI 3.1 document of this server under `limits` (they bound the input lists)."""
    n = limits.max_inputs
    openai_embeddings = _post(
        "OpenAI embeddings. Model '<id>-query' embeds queries with the default instruction. "
        "An over-long input is refused (400) unless truncate is true.", "openai",
        {"type": "object", "required": ["input"], "properties": {
            "input": _inputs(n), "model": {"type": "string"},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]}, "user": {"type": "string"},
            **_QUERY_FIELDS, **_truncate(False)}},
        {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
            "object": {"const": "list"}, "model": {"type": "string"},
            "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                                "properties": {"object": {"const": "embedding"},
                                                               "index": {"type": "integer"},
                                                               "embedding": {"oneOf": [_VECTOR, {"type": "string"}]}}}},
            "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                      "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}})
    models = _get("The models served; the embedding model is listed again as '<id>-query'.", "openai", {
        "type": "object", "required": ["object", "data"], "properties": {"object": {"const": "list"}, "data": {
            "type": "array", "items": {"type": "object", "required": ["id", "object", "created", "owned_by"],
                                       "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                                                      "created": {"type": "integer"},
                                                      "owned_by": {"type": "string"}}}}}})
    tei_embed_body = {"type": "object", "required": ["inputs"], "properties": {
        "inputs": _inputs(n), "normalize": {"type": "boolean", "default": True},
        "truncation_direction": {"type": "string", "enum": ["Right", "Left"]}, **_QUERY_FIELDS, **_truncate(False)}}
    tei_rerank_body = {"type": "object", "required": ["query", "texts"], "properties": {
        "query": _STRING, "texts": _texts(n), "top_n": {"type": "integer", "minimum": 1},
        "raw_scores": {"type": "boolean"}, "return_text": {"type": "boolean"}, "instruction": _STRING,
        **_truncate(False)}}
    tei_vectors = {"type": "array", "items": _VECTOR}
    tei_ranks = {"type": "array", "items": {"type": "object", "required": ["index", "score"], "properties": {
        "index": {"type": "integer"}, "score": {"type": "number"}, "text": {"type": "string"}}}}
    ranked = {"type": "array", "items": {"type": "object", "required": ["index", "relevance_score"], "properties": {
        "index": {"type": "integer"}, "relevance_score": {"type": "number"},
        "document": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}}}}
    documents = {"type": "array", "minItems": 1, "maxItems": n, "items": {"oneOf": [
        _STRING, {"type": "object", "required": ["text"], "properties": {"text": _STRING}}]}}
    llama_cpp_rerank = _post(
        "llama.cpp/Jina rerank; with 'texts' instead of 'documents', TEI's form (TEI's answers and errors). "
        "An over-long document is refused unless truncate is true.", "llama_cpp",
        {"oneOf": [{"type": "object", "required": ["query", "documents"], "properties": {
            "query": _STRING, "documents": documents, "top_n": {"type": "integer", "minimum": 1},
            "return_documents": {"type": "boolean"}, "model": {"type": "string"}, "instruction": _STRING,
            **_truncate(False)}}, tei_rerank_body]},
        {"oneOf": [{"type": "object", "required": ["model", "object", "usage", "results"],
                    "properties": {"results": ranked}}, tei_ranks]})
    # The TEI form of these routes answers errors in TEI's shape: let either shape through.
    for status, answer in llama_cpp_rerank["post"]["responses"].items():
        if status != "200" and "content" in answer:
            answer["content"]["application/json"]["schema"] = {"anyOf": [
                {"$ref": "#/components/schemas/llama_cpp_error"}, {"$ref": "#/components/schemas/tei_error"}]}
    paths = {
        "/health": {"get": {"summary": "Readiness: 200 once the models are loaded.", "responses": {
            "200": _json("Ready.", {"type": "object", "required": ["status", "models"], "properties": {
                "status": {"const": "ok"}, "models": {"type": "array", "items": {"type": "string"}}}}),
            "503": _json("Loading, or loading failed.", {"type": "object", "required": ["status"], "properties": {
                "status": {"enum": ["loading", "failed"]}}})}}},
        "/metrics": _get("Prometheus metrics.", "openai", {"type": "string"}, "text/plain"),
        "/openapi.json": _get("This document.", "openai", {"type": "object"}),
        "/v1/embeddings": openai_embeddings,
        "/embeddings": openai_embeddings,
        "/v1/models": models,
        "/models": models,
        "/embed": _post("TEI embed. truncate defaults to false: an over-long input is refused with 413.", "tei",
                        tei_embed_body, tei_vectors, "422"),
        "/": _post("TEI's root route: embeddings for 'inputs', TEI rerank for 'query' and 'texts'.", "tei",
                   {"oneOf": [tei_embed_body, tei_rerank_body]}, {"oneOf": [tei_vectors, tei_ranks]}, "422"),
        "/v1/rerank": llama_cpp_rerank,
        "/rerank": llama_cpp_rerank,
        "/v1/reranking": llama_cpp_rerank,
        "/v2/rerank": _post(
            "Cohere rerank v2. Over-long documents are cut to the model's context, as Cohere cuts them.", "cohere",
            {"type": "object", "required": ["query", "documents"], "properties": {
                "query": _STRING, "documents": documents, "top_n": {"type": "integer", "minimum": 1},
                "max_tokens_per_doc": {"type": "integer", "minimum": 1}, "return_documents": {"type": "boolean"},
                "model": {"type": "string"}, "instruction": _STRING}},
            {"type": "object", "required": ["id", "results", "meta"], "properties": {"results": ranked}}),
        "/api/embed": _post(
            "Ollama embed. truncate defaults to true, as in Ollama.", "ollama",
            {"type": "object", "required": ["input"], "properties": {
                "input": {"oneOf": [_STRING, _texts(n)]}, "model": {"type": "string"},
                "keep_alive": {"type": ["string", "number"]}, "options": {"type": "object"},
                **_QUERY_FIELDS, **_truncate(True)}},
            {"type": "object", "required": ["model", "embeddings"], "properties": {
                "model": {"type": "string"}, "embeddings": {"type": "array", "items": _VECTOR},
                "prompt_eval_count": {"type": "integer"}}}),
        "/api/tags": _get("Ollama's model list.", "ollama", {"type": "object", "required": ["models"], "properties": {
            "models": {"type": "array", "items": {"type": "object", "required": ["name", "model"]}}}}),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "qwen3-gguf serve", "version": "1",
                 "description": "Embeddings and reranking for Qwen3 GGUF models in the APIs clients already speak: "
                                "OpenAI, TEI, Ollama, llama.cpp/Jina and Cohere."},
        "paths": paths,
        "components": {"schemas": {f"{family}_error": schema for family, schema in _ERRORS.items()}},
    }
