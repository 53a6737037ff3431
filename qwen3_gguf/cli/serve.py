"""`qwen3-gguf serve`: the embedding and reranking HTTP server (see qwen3_gguf.server)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
import time

import click

from ..catalog import default_embedding_model, resolve_model
from ..errors import UserError
from ..gguf_file import read_model_file, require_kind
from ..server.limits import DRAIN_SECONDS, Limits
from ._common import AppState, model_option, runtime_options


@click.command()
@model_option(default=default_embedding_model())
@click.option("--no-embedding", is_flag=True, help="Serve no embedding model (only the --rerank-model).")
@click.option("--rerank-model", help="Reranker GGUF file or catalog name (default: no reranker).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the server to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", envvar="QWEN3_GGUF_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every route but /health.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=Limits.max_batch_tokens, show_default=True,
              help="Tokens of waiting requests handed to the engine together.")
@click.option("--max-queue-tokens", type=click.IntRange(min=1), default=Limits.max_queue_tokens, show_default=True,
              help="Tokens admitted and not yet answered; past it requests get 429 with Retry-After.")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=Limits.max_request_bytes,
              show_default=True, help="Larger request bodies get 413.")
@click.option("--max-inputs", type=click.IntRange(min=1), default=Limits.max_inputs, show_default=True,
              help="More inputs (texts, documents) in one request get 413.")
@click.option("--accept-token-ids", is_flag=True,
              help="Embed token-id inputs (as Qwen3 ids) instead of refusing them; only for clients that "
                   "tokenize with Qwen3's own tokenizer.")
@runtime_options
@click.pass_obj
def serve(obj: AppState, model: str, no_embedding: bool, rerank_model: str | None, host: str, port: int,
          api_key: str | None, max_batch_tokens: int, max_queue_tokens: int, max_request_bytes: int,
          max_inputs: int, accept_token_ids: bool, device: str, threads: int | None) -> None:
    """Serve embeddings and reranking over HTTP: OpenAI, TEI, Ollama, llama.cpp/Jina and Cohere APIs.

    Requests waiting at the same time are batched together. Stop with Ctrl-C or SIGTERM:
    requests in flight are finished first.
    """
    try:
        import uvicorn

        from ..server import create_app
    except ImportError as exc:
        raise UserError(f"the server needs the serve extra ({exc.name} is missing): "
                        "pip install 'qwen3-gguf[serve]'") from exc

    files = {}
    if not no_embedding:
        files["embedding"] = read_model_file(resolve_model(model, "embedding"))
    if rerank_model:
        files["reranker"] = read_model_file(resolve_model(rerank_model, "reranker"))
    if not files:
        raise UserError("nothing to serve: --no-embedding needs a --rerank-model")
    for kind, model_file in files.items():
        require_kind(model_file, kind)
    listener = _listen(host, port)
    failure: list[BaseException] = []

    def load():
        from ..embed import Embedder
        from ..rerank import Reranker

        started = time.perf_counter()
        options = {"device": device, "threads": threads, "verbose": obj.verbose}
        try:
            embedder = Embedder(files["embedding"].path, **options) if "embedding" in files else None
            reranker = Reranker(files["reranker"].path, **options) if "reranker" in files else None
        except BaseException as exc:
            failure.append(exc)
            server.should_exit = True
            raise
        click.echo(f"Ready: models loaded in {time.perf_counter() - started:.1f} s.", err=True)
        return embedder, reranker

    limits = Limits(max_batch_tokens=max_batch_tokens, max_queue_tokens=max_queue_tokens,
                    max_request_bytes=max_request_bytes, max_inputs=max_inputs)
    app = create_app(load=load, api_key=api_key, limits=limits, accept_token_ids=accept_token_ids)
    config = uvicorn.Config(app, log_level="info" if obj.verbose else "warning", access_log=obj.verbose,
                            timeout_graceful_shutdown=DRAIN_SECONDS)
    server = uvicorn.Server(config)
    _print_banner(listener, files, app, api_key)
    if not api_key and not _is_loopback(host):
        click.echo(f"Warning: listening on {host} without an API key: anyone who can reach this machine can "
                   "use the server (set --api-key or QWEN3_GGUF_API_KEY).", err=True)
    # uvicorn stops on SIGTERM/SIGINT (finishing what is in flight) and then raises the signal
    # again against the handlers it found: make those return, so that a drained stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[listener])
    listener.close()
    if failure:
        raise failure[0] if isinstance(failure[0], UserError) else UserError(f"loading the models failed: {failure[0]}")
    if not app.state.server.drained:
        click.echo(f"Stopped after {DRAIN_SECONDS} s with requests still being computed; they were dropped.",
                   err=True)
        sys.stderr.flush()
        os._exit(1)  # a worker is inside llama.cpp: exit without tearing the models down under it
    click.echo("Stopped.", err=True)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the models load, so a busy port fails at once."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(info[0], socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(info[4])
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _print_banner(listener: socket.socket, files: dict, app, api_key: str | None) -> None:
    host, port = listener.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"qwen3-gguf serve: http://{shown_host}:{port}", err=True)
    for kind, m in files.items():
        dims = f", {m.embedding_length} dimensions" if kind == "embedding" else ""
        click.echo(f"  {kind:<9}  {m.path.stem}  ({m.file_type}{dims})  {m.path}", err=True)
    by_method: dict[str, list[str]] = {}
    for route in app.router.routes:
        for method in sorted(route.methods - {"HEAD"}):
            by_method.setdefault(method, []).append(route.path)
    for method, paths in by_method.items():
        click.echo(f"  {method:<9}  {' '.join(paths)}", err=True)
    key = "required (Authorization: Bearer …)" if api_key else "not required"
    click.echo(f"  API key    {key}", err=True)
    click.echo("Loading the models (GET /health answers 503 until they are ready)…", err=True)
