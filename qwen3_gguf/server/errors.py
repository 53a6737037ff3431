"""HTTP errors and the shape each API family gives them (as the original servers do)."""

from __future__ import annotations

from collections.abc import Callable


class ApiError(Exception):
    """A request the server answers with an error status; `param` names the field at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.family: Family | None = None  # set where a route answers in another family's shape

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


# OpenAI: {"error": {"message", "type", "param", "code"}}; type and default code by status.
_OPENAI_TYPES = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}

# llama.cpp's server (its /v1/rerank): {"error": {"code": <status>, "message", "type"}}.
_LLAMA_CPP_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "unavailable_error",
    500: "server_error",
    503: "unavailable_error",
}

# Text Embeddings Inference: {"error", "error_type"}.
_TEI_TYPES = {401: "Unauthorized", 429: "Overloaded", 500: "Backend", 503: "Unhealthy"}
TEI_OVER_LONG_STATUS = 413  # TEI answers input it will not take (its "Validation" errors) with 413


def openai_body(error: ApiError) -> dict:
    kind, code = _OPENAI_TYPES.get(error.status, ("invalid_request_error", None))
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code or code}}


def llama_cpp_body(error: ApiError) -> dict:
    kind = _LLAMA_CPP_TYPES.get(error.status, "invalid_request_error")
    return {"error": {"code": error.status, "message": error.message, "type": kind}}


def tei_body(error: ApiError) -> dict:
    return {"error": error.message, "error_type": _TEI_TYPES.get(error.status, "Validation")}


def cohere_body(error: ApiError) -> dict:
    return {"message": error.message}


def ollama_body(error: ApiError) -> dict:
    return {"error": error.message}


Family = Callable[[ApiError], dict]
