"""Text Embeddings Inference's `POST /embed`: a nested list of vectors back."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from .errors import ApiError, tei_body
from .parsing import embedding_inputs, field, instruction_of, positive_int, read_json

PATHS = ("/embed",)


def routes(endpoint) -> list[Route]:
    return [Route("/embed", endpoint(embed, tei_body), methods=["POST"])]


async def embed(request: Request, state) -> list:
    body = await read_json(request, state.limits.max_request_bytes)
    service = state.embedding_service()
    inputs = embedding_inputs(body.get("inputs"), "inputs", max_inputs=state.limits.max_inputs)
    direction = field(body, "truncation_direction", str, "Right")
    if direction.lower() != "right":
        raise ApiError(422, "only 'Right' truncation is supported: the EOS that pooling reads is kept at the end",
                       param="truncation_direction")
    result = await service.embed(
        request, inputs, instruction=instruction_of(body), dim=positive_int(body, "dimensions"),
        normalize=field(body, "normalize", bool, True), truncate=field(body, "truncate", bool, True), field="inputs",
    )
    return result.vectors.tolist()
