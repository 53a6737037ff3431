"""OpenAI's embeddings API (`POST /v1/embeddings`, `GET /v1/models`), with Qwen3's query
instructions as extensions: `input_type`, `prompt_name`, `instruction`.

OpenAI clients cannot say "query" (LangChain's `embed_query` sends what `embed_documents` does),
so the embedding model is listed twice: `<id>` embeds documents, `<id>-query` embeds queries
with the default instruction. Over-long inputs are refused (400) as OpenAI's API does, unless
the request sends the extension `"truncate": true`."""

from __future__ import annotations

import base64
import time

from starlette.requests import Request
from starlette.routing import Route

from ..prompts import DEFAULT_INSTRUCTION
from .errors import ApiError, openai_body
from .parsing import embedding_inputs, field, instruction_of, positive_int, read_json

PATHS = ("/v1/embeddings", "/embeddings", "/v1/models", "/models")
ENCODINGS = ("float", "base64")
QUERY_SUFFIX = "-query"
_STARTED = int(time.time())


def routes(endpoint) -> list[Route]:
    return [
        *(Route(path, endpoint(embeddings, openai_body), methods=["POST"]) for path in PATHS[:2]),
        *(Route(path, endpoint(models, openai_body), methods=["GET"]) for path in PATHS[2:]),
    ]


async def embeddings(request: Request, state) -> dict:
    body = await read_json(request, state.limits.max_request_bytes)
    service = state.embedding_service()
    inputs = embedding_inputs(body.get("input"), "input", max_inputs=state.limits.max_inputs,
                              accept_token_ids=state.accept_token_ids)
    model = field(body, "model", str, service.info.id)
    queries = model == service.info.id + QUERY_SUFFIX
    encoding = field(body, "encoding_format", str, "float")
    if encoding not in ENCODINGS:
        raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}",
                       param="encoding_format")
    field(body, "user", str, None)  # accepted, not used
    result = await service.embed(
        request, inputs, instruction=instruction_of(body, queries=queries), dim=positive_int(body, "dimensions"),
        truncate=field(body, "truncate", bool, False),
    )
    encode = _base64 if encoding == "base64" else (lambda vector: vector.tolist())
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)],
        "model": model,
        "usage": {"prompt_tokens": result.n_tokens, "total_tokens": result.n_tokens},
    }


async def models(request: Request, state) -> dict:
    state.require_ready()
    data = []
    for m in state.models():
        entry = {"id": m.id, "object": "model", "created": _STARTED, "owned_by": "qwen3-gguf", "kind": m.kind,
                 "file_type": m.file_type, "dimension": m.dimension}
        data.append(entry)
        if m.kind == "embedding":
            data.append({**entry, "id": m.id + QUERY_SUFFIX, "query_instruction": DEFAULT_INSTRUCTION})
    return {"object": "list", "data": data}


def _base64(vector) -> str:
    """Little-endian float32 bytes, base64: what OpenAI's SDK decodes by default."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
