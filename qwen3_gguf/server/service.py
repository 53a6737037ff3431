"""What the routes ask of the models: validated, token-counted work through the schedulers.

The routes of every API family parse their own fields and call these two services; the
services tokenize (to count, to refuse what does not fit), admit the work into the model's
scheduler and wait for exactly their own results while watching for the client to go away.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request

from ..errors import UserError
from ..limits import MIN_MRL_DIM
from ..prompts import query_text
from .errors import ApiError
from .metrics import Metrics
from .parsing import Disconnected, EmbeddingInputs
from .scheduler import QueueFull, Scheduler, ShuttingDown


@dataclass(frozen=True)
class ModelInfo:
    """How a loaded model is named and described on the wire."""

    id: str
    kind: str          # "embedding" or "reranker"
    file_type: str
    dimension: int
    file_size: int

    @classmethod
    def of(cls, model) -> ModelInfo:
        m = model.model_file
        return cls(id=m.path.stem, kind=m.kind, file_type=m.file_type, dimension=m.embedding_length,
                   file_size=m.file_size)


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray       # one row per input, in request order
    n_tokens: int             # prompt tokens, as decoded (instruction and EOS included)


@dataclass(frozen=True)
class Scored:
    scores: np.ndarray        # P(yes) per document, in request order
    n_tokens: int


class EmbeddingService:
    def __init__(self, embedder, metrics: Metrics, *, max_batch_tokens: int, max_queue_tokens: int):
        self.embedder = embedder
        self.info = ModelInfo.of(embedder)
        self._metrics = metrics
        self._scheduler = Scheduler("embedding", self._run_group, max_batch_tokens=max_batch_tokens,
                                    max_queue_tokens=max_queue_tokens,
                                    stats=metrics.scheduler_stats(self.info.kind))

    async def embed(self, request: Request, inputs: EmbeddingInputs, *, instruction: str | None,
                    dim: int | None, normalize: bool = True, truncate: bool, field: str = "input",
                    over_long_status: int = 400) -> Embedded:
        """The vectors of `inputs`; an input over the model's limit is cut to it with `truncate`,
        else refused with `over_long_status` (each API family answers it with its own)."""
        if dim is not None and not MIN_MRL_DIM <= dim <= self.info.dimension:
            raise ApiError(400, f"'dimensions' must be within {MIN_MRL_DIM}…{self.info.dimension} for this model "
                                f"(its embeddings have {self.info.dimension}), got {dim}", param="dimensions")
        if inputs.texts is not None:
            lengths = await asyncio.to_thread(self._text_lengths, inputs.texts, instruction, truncate, field,
                                              over_long_status)
            key, items = ("text", instruction, dim, normalize), inputs.texts
        else:
            if instruction is not None:
                raise ApiError(400, "token-id inputs are embedded as given; send text to have an instruction "
                                    "put before it, or include the instruction's tokens", param="input_type")
            lengths = self._token_lengths(inputs.token_ids, truncate, field, over_long_status)
            key, items = ("ids", None, dim, normalize), inputs.token_ids
        rows = await self._admit(request, key, items, lengths)
        return Embedded(np.stack(rows), sum(lengths))

    def _text_lengths(self, texts: list[str], instruction: str | None, truncate: bool, field: str,
                      over_long_status: int) -> list[int]:
        """Tokens each text is decoded as (after truncation), refusing overlong ones when asked."""
        lengths = []
        for i, text in enumerate(texts):
            prompt = text if instruction is None else query_text(text, instruction)
            ids, cut = self.embedder.tokenize(prompt)
            if cut and not truncate:
                n_tokens = len(self.embedder.token_pieces(prompt)) + 1
                raise _too_long(field, i, n_tokens, self.embedder.max_tokens, over_long_status)
            lengths.append(len(ids))
        return lengths

    def _token_lengths(self, token_ids: list[list[int]], truncate: bool, field: str,
                       over_long_status: int) -> list[int]:
        n_vocab, eos, limit = self.embedder.vocabulary_size, self.embedder.eos_token_id, self.embedder.max_tokens
        lengths = []
        for i, ids in enumerate(token_ids):
            outside = next((t for t in ids if not 0 <= t < n_vocab), None)
            if outside is not None:
                raise ApiError(400, f"'{field}[{i}]' holds token id {outside}, outside this model's vocabulary "
                                    f"(0…{n_vocab - 1})", param=field)
            n_tokens = len(ids) + (ids[-1] != eos)
            if n_tokens == 1:
                raise ApiError(400, f"'{field}[{i}]' holds only the end-of-text token; there is nothing to embed",
                               param=field)
            if n_tokens > limit and not truncate:
                raise _too_long(field, i, n_tokens, limit, over_long_status)
            lengths.append(min(n_tokens, limit))
        return lengths

    def _run_group(self, key, items: list) -> np.ndarray:
        kind, instruction, dim, normalize = key
        if kind == "text":
            return self.embedder.encode(items, instruction=instruction, dim=dim, normalize=normalize)
        return self.embedder.encode_tokens(items, dim=dim, normalize=normalize)

    async def _admit(self, request: Request, key, items: list, lengths: list[int]) -> list:
        return await _admit(self._scheduler, self._metrics, self.info.kind, request, key, items, lengths)

    def stop(self, timeout: float) -> bool:
        return self._scheduler.stop(timeout)


class RerankService:
    def __init__(self, reranker, metrics: Metrics, *, max_batch_tokens: int, max_queue_tokens: int):
        self.reranker = reranker
        self.info = ModelInfo.of(reranker)
        self._metrics = metrics
        self._scheduler = Scheduler("reranker", self._run_group, max_batch_tokens=max_batch_tokens,
                                    max_queue_tokens=max_queue_tokens,
                                    stats=metrics.scheduler_stats(self.info.kind))

    async def score(self, request: Request, query: str, documents: list[str], *, instruction: str | None,
                    truncate: bool, field: str = "documents", over_long_status: int = 400) -> Scored:
        """P(yes) of each document; a prompt over the model's limit has its document cut with
        `truncate`, else is refused with `over_long_status`."""
        if not query:
            raise ApiError(400, "'query' is empty; there is nothing to rank against", param="query")
        lengths = await asyncio.to_thread(self._lengths, query, documents, instruction, truncate, field,
                                          over_long_status)
        scores = await _admit(self._scheduler, self._metrics, self.info.kind, request, (query, instruction),
                              documents, lengths)
        return Scored(np.asarray(scores, dtype=np.float32), sum(lengths))

    def _lengths(self, query: str, documents: list[str], instruction: str | None, truncate: bool,
                 field: str, over_long_status: int) -> list[int]:
        lengths = []
        for i, document in enumerate(documents):
            prompt = (query, document, *([instruction] if instruction else []))
            ids, cut = self.reranker.tokenize(*prompt)
            if cut and not truncate:
                n_tokens = self.reranker.prompt_length(*prompt)
                raise ApiError(over_long_status, f"'{field}[{i}]' makes a prompt of {n_tokens} tokens with the query "
                                                 f"and template, over this model's limit of "
                                                 f"{self.reranker.max_tokens}{_TRUNCATE_HINT}", param=field)
            lengths.append(len(ids))
        return lengths

    def _run_group(self, key, documents: list[str]) -> np.ndarray:
        query, instruction = key
        return self.reranker.score(query, documents, instruction=instruction)

    def stop(self, timeout: float) -> bool:
        return self._scheduler.stop(timeout)


def _too_long(field: str, index: int, n_tokens: int, limit: int, status: int) -> ApiError:
    return ApiError(status, f"'{field}[{index}]' has {n_tokens} tokens, over this model's limit of {limit}"
                         f"{_TRUNCATE_HINT}", param=field)


_TRUNCATE_HINT = "; send \"truncate\": true to have it cut to the limit"


async def _admit(scheduler: Scheduler, metrics: Metrics, model: str, request: Request, key, items: list,
                 lengths: list[int]) -> list:
    """Queue the items and wait for their results, unless the client disconnects first."""
    n_tokens = sum(lengths)
    if n_tokens > scheduler.max_queue_tokens:
        raise ApiError(413, f"the request holds {n_tokens} tokens; this server queues at most "
                            f"{scheduler.max_queue_tokens} (--max-queue-tokens): split it into smaller requests")
    work = asyncio.ensure_future(scheduler.run(key, items, n_tokens))
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work not in done:
        work.cancel()
        raise Disconnected()
    try:
        results = work.result()
    except QueueFull as exc:
        raise ApiError(429, f"the server is busy ({scheduler.queued_tokens} tokens queued); retry in "
                            f"{exc.retry_after} s", retry_after=exc.retry_after) from exc
    except ShuttingDown as exc:
        raise ApiError(503, "the server is shutting down") from exc
    except UserError as exc:  # the engine's own checks, should one be stricter than ours
        raise ApiError(400, str(exc)) from exc
    metrics.admitted(model, len(items), n_tokens)
    return results


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone away (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
