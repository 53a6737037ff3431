"""The ASGI app: routes of every API family over one embedding and one rerank service."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import api_ollama, api_openai, api_rerank, api_tei, openapi
from .errors import ApiError, Family, cohere_body, llama_cpp_body, ollama_body, openai_body, tei_body
from .limits import DRAIN_SECONDS, Limits
from .metrics import CONTENT_TYPE, Metrics
from .parsing import Disconnected
from .service import EmbeddingService, RerankService

log = logging.getLogger("qwen3_gguf.server")


class ServerState:
    """The models (once loaded), their services, the limits and the metrics of one app."""

    def __init__(self, *, api_key: str | None, limits: Limits, accept_token_ids: bool):
        self.api_key = api_key
        self.accept_token_ids = accept_token_ids
        self.limits = limits
        self.metrics = Metrics()
        self.embedding: EmbeddingService | None = None
        self.rerank: RerankService | None = None
        self.ready = False
        self.owned_models: tuple = ()  # what the app loaded itself, and so closes
        self.load_error: BaseException | None = None
        self.drained = False  # set at shutdown: every admitted request was finished

    def attach(self, embedder, reranker) -> None:
        schedule = {"max_batch_tokens": self.limits.max_batch_tokens, "max_queue_tokens": self.limits.max_queue_tokens}
        if embedder is not None:
            self.embedding = EmbeddingService(embedder, self.metrics, **schedule)
        if reranker is not None:
            self.rerank = RerankService(reranker, self.metrics, **schedule)
        self.ready = True

    def loaded(self, loading: asyncio.Future) -> None:
        """Attach what `load` returned, or keep why it failed (then /health says so)."""
        if loading.cancelled():
            return
        if loading.exception() is not None:
            self.load_error = loading.exception()
            log.error("loading the models failed: %s", self.load_error)
            return
        embedder, reranker = loading.result()
        self.owned_models = tuple(m for m in (embedder, reranker) if m is not None)
        self.attach(embedder, reranker)

    def embedding_service(self) -> EmbeddingService:
        self.require_ready()
        if self.embedding is None:
            raise ApiError(404, "this server has no embedding model; start it with "
                                "`qwen3-gguf serve -m EMBEDDING_MODEL`", code="model_not_found")
        return self.embedding

    def rerank_service(self) -> RerankService:
        self.require_ready()
        if self.rerank is None:
            raise ApiError(404, "this server has no reranker; start it with "
                                "`qwen3-gguf serve --rerank-model RERANKER_MODEL`", code="model_not_found")
        return self.rerank

    def models(self) -> list:
        return [service.info for service in (self.embedding, self.rerank) if service is not None]

    def require_ready(self) -> None:
        if not self.ready:
            raise ApiError(503, "the models are still loading; retry shortly", retry_after=1)

    def shutdown(self) -> None:
        """Finish the admitted work (for up to DRAIN_SECONDS), then free the models the app loaded.

        A model whose worker is still decoding after that is left alone (freeing it under the
        decode would crash the process); `drained` says whether everything finished."""
        self.drained = all([service.stop(DRAIN_SECONDS) for service in (self.embedding, self.rerank)
                            if service is not None])
        if self.drained:
            for model in self.owned_models:
                model.close()


def create_app(embedder=None, reranker=None, *, api_key: str | None = None, limits: Limits | None = None,
               load: Callable[[], tuple] | None = None, accept_token_ids: bool = False) -> Starlette:
    """An ASGI app serving `embedder` (an Embedder) and `reranker` (a Reranker); either may be None.

    With `load` (a function returning `(embedder, reranker)`) the models are loaded in a thread
    when the app starts, /health answers 503 until then, and the app closes them at shutdown.
    Models given directly stay the caller's to close. With `api_key`, every route but /health
    needs `Authorization: Bearer <api_key>`. Token-id inputs are refused unless `accept_token_ids`:
    they are read as Qwen3 ids, and clients that send ids send their own vocabulary's.
    """
    state = ServerState(api_key=api_key or None, limits=limits or Limits(), accept_token_ids=accept_token_ids)
    if load is None:
        state.attach(embedder, reranker)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loading = None
        if load is not None:
            loading = asyncio.ensure_future(asyncio.to_thread(load))
            loading.add_done_callback(state.loaded)
        try:
            yield
        finally:
            if loading is not None:
                await asyncio.wait({loading})
            await asyncio.to_thread(state.shutdown)

    routes = [
        Route("/health", _endpoint(_health, openai_body), methods=["GET"]),
        Route("/metrics", _endpoint(_metrics, openai_body), methods=["GET"]),
        Route("/openapi.json", _endpoint(_openapi, openai_body), methods=["GET"]),
        *api_openai.routes(_endpoint),
        *api_rerank.routes(_endpoint),
        *api_tei.routes(_endpoint),
        *api_ollama.routes(_endpoint),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _unknown_route})
    app.state.server = state
    return _Gate(app, state)


def _endpoint(handler, family: Family):
    """A Starlette endpoint around `handler(request, state)`: errors in the family's shape."""

    async def endpoint(request: Request) -> Response:
        state: ServerState = request.app.state.server
        try:
            result = await handler(request, state)
        except ApiError as error:
            shape = error.family or family
            return JSONResponse(shape(error), status_code=error.status, headers=error.headers)
        except Disconnected:
            return Response(status_code=499)  # nobody is there to read it
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            error = ApiError(500, "the server failed on this request; its log says why")
            return JSONResponse(family(error), status_code=500)
        return result if isinstance(result, Response) else JSONResponse(result)

    return endpoint


async def _health(request: Request, state: ServerState) -> Response:
    if not state.ready:
        return JSONResponse({"status": "failed" if state.load_error else "loading"}, status_code=503)
    return JSONResponse({"status": "ok", "models": [m.id for m in state.models()]})


async def _metrics(request: Request, state: ServerState) -> Response:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


async def _openapi(request: Request, state: ServerState) -> dict:
    return openapi.document(state.limits)


def family_for(path: str) -> Family:
    """The error shape of a path, for answers given before (or without) its route."""
    if path.startswith("/api/"):
        return ollama_body
    return {"/v2/rerank": cohere_body, "/embed": tei_body, "/": tei_body, "/rerank": llama_cpp_body,
            "/v1/rerank": llama_cpp_body, "/v1/reranking": llama_cpp_body}.get(path, openai_body)


async def _unknown_route(request: Request, exc: HTTPException) -> Response:
    family = family_for(request.url.path)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = f"there is no route {request.method} {request.url.path} (see GET /v1/models and the README)"
    return JSONResponse(family(ApiError(exc.status_code, message)), status_code=exc.status_code)


class _Gate:
    """Pure ASGI wrapper: the API key check and the request metrics, for every route."""

    def __init__(self, app: Starlette, state: ServerState):
        self._app = app
        self._server = state

    def __getattr__(self, name):  # the wrapped app's state, router, ... for whoever mounts it
        return getattr(self._app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        path = scope["path"]
        if self._server.api_key is not None and path != "/health" and not self._authorized(scope):
            error = ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'")
            response = JSONResponse(family_for(path)(error), status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            self._server.metrics.answered("unauthorized", 401, 0.0)
            return await response(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_status)
        finally:
            route = path if path in _ROUTE_NAMES else "other"
            self._server.metrics.answered(route, status, time.perf_counter() - started)

    def _authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        expected = b"Bearer " + self._server.api_key.encode()
        return hmac.compare_digest(given, expected)


_ROUTE_NAMES = {"/health", "/metrics", "/openapi.json", *api_openai.PATHS, *api_rerank.PATHS, *api_tei.PATHS,
                *api_ollama.PATHS}
