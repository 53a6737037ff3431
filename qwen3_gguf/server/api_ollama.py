"""Ollama's `POST /api/embed` and `GET /api/tags`; over-long inputs are cut (`truncate` defaults to true, as in
Ollama)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.routing import Route

from .errors import ollama_body
from .parsing import EmbeddingInputs, field, instruction_of, positive_int, read_json, text_list

PATHS = ("/api/embed", "/api/tags")


def routes(endpoint) -> list[Route]:
    return [
        Route("/api/embed", endpoint(embed, ollama_body), methods=["POST"]),
        Route("/api/tags", endpoint(tags, ollama_body), methods=["GET"]),
    ]


async def embed(request: Request, state) -> dict:
    started = time.perf_counter_ns()
    body = await read_json(request, state.limits.max_request_bytes)
    service = state.embedding_service()
    texts = text_list(body.get("input"), "input", max_inputs=state.limits.max_inputs)
    field(body, "keep_alive", (str, int, float), None)  # the model stays loaded; accepted, not used
    field(body, "options", dict, None)
    result = await service.embed(
        request, EmbeddingInputs(texts=texts), instruction=instruction_of(body),
        dim=positive_int(body, "dimensions"), truncate=field(body, "truncate", bool, True),
    )
    return {
        "model": field(body, "model", str, service.info.id),
        "embeddings": result.vectors.tolist(),
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": 0,
        "prompt_eval_count": result.n_tokens,
    }


async def tags(request: Request, state) -> dict:
    state.require_ready()
    return {"models": [
        {"name": m.id, "model": m.id, "modified_at": _MODIFIED, "size": m.file_size, "digest": "",
         "details": {"format": "gguf", "family": "qwen3", "families": ["qwen3"], "parameter_size": "",
                     "quantization_level": m.file_type}}
        for m in state.models()
    ]}


_MODIFIED = datetime.now(timezone.utc).isoformat()
