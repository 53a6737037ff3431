"""OpenAI's embeddings API (`POST /v1/embeddings`, `GET /v1/models`), with Qwen3's query
instructions as extensions: `input_type`, `prompt_name`, `instruction`."""

from __future__ import annotations

import base64
import time

from starlette.requests import Request
from starlette.routing import Route

from .errors import ApiError, openai_body
from .parsing import embedding_inputs, field, instruction_of, positive_int, read_json

PATHS = ("/v1/embeddings", "/embeddings", "/v1/models", "/models")
ENCODINGS = ("float", "base64")
_STARTED = int(time.time())


def routes(endpoint) -> list[Route]:
    return [
        *(Route(path, endpoint(embeddings, openai_body), methods=["POST"]) for path in PATHS[:2]),
        *(Route(path, endpoint(models, openai_body), methods=["GET"]) for path in PATHS[2:]),
    ]


async def embeddings(request: Request, state) -> dict:
    body = await read_json(request, state.limits.max_request_bytes)
    service = state.embedding_service()
    inputs = embedding_inputs(body.get("input"), "input", max_inputs=state.limits.max_inputs)
    model = field(body, "model", str, service.info.id)
    encoding = field(body, "encoding_format", str, "float")
    if encoding not in ENCODINGS:
        raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}",
                       param="encoding_format")
    field(body, "user", str, None)  # accepted, not used
    result = await service.embed(
        request, inputs, instruction=instruction_of(body), dim=positive_int(body, "dimensions"),
        truncate=field(body, "truncate", bool, True),
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
    return {
        "object": "list",
        "data": [{"id": m.id, "object": "model", "created": _STARTED, "owned_by": "qwen3-gguf",
                  "kind": m.kind, "file_type": m.file_type, "dimension": m.dimension} for m in state.models()],
    }


def _base64(vector) -> str:
    """Little-endian float32 bytes, base64: what OpenAI's SDK decodes by default."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
