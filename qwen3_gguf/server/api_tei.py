"""Text Embeddings Inference: `POST /embed` (a nested list of vectors back) and TEI's root route
`POST /`, which `huggingface_hub.InferenceClient(model=URL)` posts to: embeddings for `inputs`,
TEI's rerank form for `query` + `texts`.

As in TEI, `truncate` defaults to false and an over-long input is refused with 413."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from . import api_rerank
from .errors import TEI_OVER_LONG_STATUS, ApiError, tei_body
from .parsing import embedding_inputs, field, instruction_of, positive_int, read_json

PATHS = ("/embed", "/")


def routes(endpoint) -> list[Route]:
    return [Route("/embed", endpoint(embed, tei_body), methods=["POST"]),
            Route("/", endpoint(root, tei_body), methods=["POST"])]


async def embed(request: Request, state) -> list:
    return await _embed(request, state, await read_json(request, state.limits.max_request_bytes))


async def root(request: Request, state):
    """TEI's `/` answers with what its model does; this server may hold both kinds, so the body decides."""
    body = await read_json(request, state.limits.max_request_bytes)
    if "texts" in body:
        return await api_rerank.tei_rerank(request, state, body)
    return await _embed(request, state, body)


async def _embed(request: Request, state, body: dict) -> list:
    service = state.embedding_service()
    inputs = embedding_inputs(body.get("inputs"), "inputs", max_inputs=state.limits.max_inputs,
                              accept_token_ids=state.accept_token_ids)
    direction = field(body, "truncation_direction", str, "Right")
    if direction.lower() != "right":
        raise ApiError(422, "only 'Right' truncation is supported: the EOS that pooling reads is kept at the end",
                       param="truncation_direction")
    result = await service.embed(
        request, inputs, instruction=instruction_of(body), dim=positive_int(body, "dimensions"),
        normalize=field(body, "normalize", bool, True), truncate=field(body, "truncate", bool, False),
        field="inputs", over_long_status=TEI_OVER_LONG_STATUS,
    )
    return result.vectors.tolist()
