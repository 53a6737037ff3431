"""`qwen3-gguf mcp`: a collection served to agents over the Model Context Protocol (stdio or HTTP)."""

from __future__ import annotations

import click

from ..errors import UserError
from ._common import AppState, model_option, runtime_options
from .serve import _is_loopback, _listen
from .store import collection_option


@click.command()
@click.option("--db", help="The SQLite collection, anywhere (instead of a named one).")
@collection_option
@model_option(help="Embedding GGUF or catalog name [default: the collection's model].")
@click.option("--rerank-model", help="A reranker for the search tool's rerank argument (GGUF or catalog name).")
@click.option("--http", "address", metavar="HOST:PORT", help="Serve streamable HTTP at http://HOST:PORT/mcp on a "
              "loopback address (e.g. 127.0.0.1:8765) instead of stdio.")
@runtime_options
@click.pass_obj
def mcp(obj: AppState, db, name, model, rerank_model, address, device, threads) -> None:
    """Serve a collection to MCP clients (agents): tools search, get and status.

    Over stdio by default: register `qwen3-gguf mcp -c NAME` as the command of an MCP server in the
    client. The models load once, before the first request is answered.
    """
    from ..files import collections
    from ..files.store import Collection
    from ..server.mcp_server import CollectionTools, build_server

    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        raise UserError("qwen3-gguf mcp needs the MCP SDK 2.x: pip install 'qwen3-gguf[mcp]'") from None

    host, port = _address(address) if address else (None, None)
    listener = _listen(host, port) if address else None
    collection = Collection(collections.resolve(db, name, must_exist=True), model=model, create=False,
                            device=device, threads=threads, verbose=obj.verbose)
    with collection:
        reranker = None
        if rerank_model:
            from ..rerank import Reranker

            reranker = Reranker(rerank_model, device=device, threads=threads, verbose=obj.verbose)
        server = build_server(CollectionTools(collection, reranker))
        if listener is None:
            server.run("stdio")
            return
        _serve_http(server, listener, host, obj.verbose)


def _address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UserError(f"--http {address}: give HOST:PORT, e.g. 127.0.0.1:8765")
    if not _is_loopback(host):
        raise UserError(f"--http {address}: the MCP server has no authentication; serve it on a loopback address "
                        "(127.0.0.1, ::1 or localhost)")
    return host, int(port)


def _serve_http(server, listener, host: str, verbose: bool) -> None:
    import uvicorn

    listener.listen()           # clients queue from here on, before uvicorn accepts
    port = listener.getsockname()[1]
    app = server.streamable_http_app(host=host)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"qwen3-gguf mcp: http://{shown}:{port}/mcp", err=True)
    config = uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose)
    uvicorn.Server(config).run(sockets=[listener])
    listener.close()
