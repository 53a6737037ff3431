"""Reading request bodies: JSON fields checked for type, inputs for shape, limits for size.

Every failure is an ApiError naming the field at fault; nothing here touches a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from ..prompts import DEFAULT_INSTRUCTION
from .errors import ApiError

_MISSING = object()


class Disconnected(Exception):
    """The client went away while its request was read or computed."""


async def read_json(request: Request, max_bytes: int) -> dict:
    """The request body as a JSON object, refused with 413 past `max_bytes` (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the request body has {int(declared)} bytes; this server takes at most {max_bytes}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"the request body is over {max_bytes} bytes, the most this server takes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise Disconnected() from exc
    try:
        body = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ApiError(400, "the request body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {_json_type(body)}")
    return body


def field(body: dict, name: str, types: type | tuple[type, ...], default=_MISSING, *, type_name: str | None = None):
    """`body[name]` if it has one of `types` (booleans are not numbers); `default` when absent or null."""
    value = body.get(name)
    if value is None:
        if default is _MISSING:
            raise ApiError(400, f"'{name}' is required", param=name)
        return default
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = type_name or " or ".join(_TYPE_NAMES[t] for t in types)
        raise ApiError(400, f"'{name}' must be {expected}, not {_json_type(value)}", param=name)
    return value


def positive_int(body: dict, name: str, default=None) -> int | None:
    value = field(body, name, int, default)
    if value is not None and value < 1:
        raise ApiError(400, f"'{name}' must be at least 1, got {value}", param=name)
    return value


def text_list(value, name: str, *, max_inputs: int, allow_objects: bool = False) -> list[str]:
    """A string or a list of non-empty strings (or {"text": ...} objects when allowed)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ApiError(400, f"'{name}' must be a string or a list of strings, not {_json_type(value)}", param=name)
    if not items:
        raise ApiError(400, f"'{name}' is an empty list; there is nothing to do", param=name)
    check_count(len(items), name, max_inputs)
    texts = []
    for i, item in enumerate(items):
        if allow_objects and isinstance(item, dict):
            item = item.get("text")
            if not isinstance(item, str):
                raise ApiError(400, f"'{name}[{i}]' is an object without a string 'text'", param=name)
        if not isinstance(item, str):
            raise ApiError(400, f"'{name}[{i}]' must be a string, not {_json_type(item)}", param=name)
        if not item:
            raise ApiError(400, f"'{name}[{i}]' is an empty string; there is nothing to embed", param=name)
        texts.append(item)
    return texts


@dataclass(frozen=True)
class EmbeddingInputs:
    """What to embed: texts, or token-id lists (exactly one of them)."""

    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids)


TOKEN_IDS_REFUSED = (
    "'{name}' holds token ids, which this server would read as Qwen3 token ids; a client that tokenized with "
    "another vocabulary gets wrong vectors without an error (LangChain's OpenAIEmbeddings sends tiktoken ids unless "
    "check_embedding_ctx_length=False): send text, or start the server with --accept-token-ids"
)


def embedding_inputs(value, name: str, *, max_inputs: int, accept_token_ids: bool) -> EmbeddingInputs:
    """A string, a list of strings, a list of token ids or a list of token-id lists (ids only when accepted)."""
    single_ids = isinstance(value, list) and value and all(_is_int(v) for v in value)
    id_lists = isinstance(value, list) and value and all(isinstance(v, list) for v in value)
    if (single_ids or id_lists) and not accept_token_ids:
        raise ApiError(400, TOKEN_IDS_REFUSED.format(name=name), param=name, code="token_ids_not_accepted")
    if single_ids:
        return EmbeddingInputs(token_ids=[value])
    if id_lists:
        check_count(len(value), name, max_inputs)
        for i, ids in enumerate(value):
            if not ids:
                raise ApiError(400, f"'{name}[{i}]' is an empty list of token ids", param=name)
            if not all(_is_int(v) for v in ids):
                raise ApiError(400, f"'{name}[{i}]' must be a list of integer token ids", param=name)
        return EmbeddingInputs(token_ids=value)
    if isinstance(value, list) and any(_is_int(v) for v in value):
        raise ApiError(400, f"'{name}' mixes token ids with other values", param=name)
    return EmbeddingInputs(texts=text_list(value, name, max_inputs=max_inputs))


def check_count(n: int, name: str, max_inputs: int) -> None:
    if n > max_inputs:
        raise ApiError(413, f"'{name}' has {n} inputs; this server takes at most {max_inputs} per request",
                       param=name)


PROMPT_NAMES = ("query", "document")


def instruction_of(body: dict, *, queries: bool = False) -> str | None:
    """The query instruction a request asks for, from the Qwen3 extensions of the APIs:
    `input_type` (Cohere/Voyage), `prompt_name` (sentence-transformers/TEI), `instruction`.
    None means the inputs are documents; with `queries` (the query model id was asked for) the
    inputs are queries unless the request says otherwise."""
    input_type = field(body, "input_type", str, None)
    prompt_name = field(body, "prompt_name", str, None)
    instruction = field(body, "instruction", str, None)
    named = [(key, v) for key, v in (("input_type", input_type), ("prompt_name", prompt_name)) if v is not None]
    for key, value in named:
        if value not in PROMPT_NAMES:
            raise ApiError(400, f"'{key}' must be 'query' or 'document', got {value!r}", param=key)
    if len({value for _, value in named}) > 1:
        raise ApiError(400, "'input_type' and 'prompt_name' disagree", param="prompt_name")
    kind = named[0][1] if named else ("query" if queries else None)
    if instruction is not None:
        if kind == "document":
            raise ApiError(400, "documents take no instruction; drop the instruction or ask for queries",
                           param="instruction")
        if not instruction.strip():
            raise ApiError(400, "'instruction' is empty", param="instruction")
        return instruction
    return DEFAULT_INSTRUCTION if kind == "query" else None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
               dict: "an object"}


def _json_type(value) -> str:
    if value is None:
        return "null"
    for kind in (bool, str, int, float, list, dict):
        if isinstance(value, kind):
            return _TYPE_NAMES[kind]
    return type(value).__name__
