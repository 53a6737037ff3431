"""A collection for agents: the MCP server behind `qwen3-gguf mcp`, built on the official MCP SDK.

    tools = CollectionTools(Collection("vectors.db", create=False))   # loads the model once
    build_server(tools).run("stdio")

Tools: `search` (query, k, mode, path_glob, min_score, rerank), `get` (a file or a chunk of the
collection, by path or `PATH#CHUNK`, with offsets) and `status` (files, chunks, model, dim, when
last indexed). A bad argument or a failing call is a tool error with a one-line message; the
server goes on serving.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ..errors import UserError

MODES = ("vector", "keyword", "hybrid")
MAX_K = 100
MAX_GET_CHARS = 100_000


class Hit(BaseModel):
    path: str
    chunk: int
    start: int = Field(description="Character offset of the chunk in the file.")
    end: int
    score: float = Field(description="The cosine, or the reranker's P(yes) when reranked.")
    text: str


class Passage(BaseModel):
    path: str
    chunk: int | None = Field(description="The chunk asked for; null for the whole file.")
    start: int = Field(description="Character offset of `text` in the file.")
    end: int
    text: str
    more: bool = Field(description="Whether text follows (ask again with a larger offset).")


class Status(BaseModel):
    collection: str
    files: int
    chunks: int
    model: str | None
    dim: int | None
    instruction: str = Field(description="The task description queries are embedded with.")
    last_indexed: str = Field(description="When the collection was last written (UTC, ISO 8601).")
    modes: list[str]
    rerank: bool = Field(description="Whether search can rerank (the server has a reranker).")


class CollectionTools:
    """What the MCP tools do, over one open collection; the embedding model (and the reranker, when
    given) is loaded here, once, before the server answers."""

    def __init__(self, collection, reranker=None):
        self.collection = collection
        self.reranker = reranker
        self._has_modes = "mode" in inspect.signature(collection.search).parameters
        collection.embedder      # noqa: B018  (load the model now, not on the first search)

    def search(self, query: str, *, k: int = 10, mode: str | None = None, path_glob: str | None = None,
               min_score: float | None = None, rerank: bool = False) -> list[Hit]:
        if not query.strip():
            raise UserError("the query is empty")
        if rerank and self.reranker is None:
            raise UserError("rerank needs a reranker: start the server with --rerank-model")
        options = dict(k=k, path_glob=path_glob, min_score=min_score, reranker=self.reranker if rerank else None)
        if mode is not None and self._has_modes:
            options["mode"] = mode
        elif mode not in (None, "vector"):
            raise UserError(f"mode {mode!r} needs keyword search, which this collection does not offer; "
                            "use mode 'vector'")
        hits = self.collection.search(query, **options)
        return [Hit(path=hit.path, chunk=hit.chunk, start=hit.start, end=hit.end, score=hit.score, text=hit.text)
                for hit in hits]

    def get(self, target: str, *, offset: int = 0, max_chars: int = MAX_GET_CHARS) -> Passage:
        return read_stored(self.collection, target, offset=offset, max_chars=max_chars)

    def status(self) -> Status:
        collection = self.collection
        written = max(os.path.getmtime(p) for p in (collection.path, collection.path.with_name(
            collection.path.name + "-wal")) if p.exists())
        return Status(collection=str(collection.path), files=collection.document_count, chunks=len(collection),
                      model=collection.metadata.get("model"), dim=collection.dim, instruction=collection.instruction,
                      last_indexed=datetime.fromtimestamp(written, timezone.utc).isoformat(timespec="seconds"),
                      modes=list(MODES) if self._has_modes else ["vector"], rerank=self.reranker is not None)


def read_stored(collection, target: str, *, offset: int = 0, max_chars: int = MAX_GET_CHARS) -> Passage:
    """What `Collection.get` gives for a file or a chunk (`PATH#CHUNK`) of `collection`, as text from
    character `offset`, at most `max_chars` of it; a glob must name one file."""
    passages = collection.get(target)
    if len(passages) > 1:
        shown = ", ".join(p.path for p in passages[:5]) + (", …" if len(passages) > 5 else "")
        raise UserError(f"{target!r} names {len(passages)} files ({shown}); get them one at a time")
    (stored,) = passages
    piece = stored.text[offset:offset + max_chars]
    return Passage(path=stored.path, chunk=stored.chunk, start=stored.start + offset,
                   end=stored.start + offset + len(piece), text=piece, more=offset + len(piece) < len(stored.text))


@contextlib.contextmanager
def _as_tool_errors():
    """A UserError from the collection becomes the tool's error message."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        yield
    except UserError as exc:
        raise ToolError(str(exc)) from None


def build_server(tools: CollectionTools):
    """The MCPServer offering `tools` (run it with .run("stdio") or serve its streamable_http_app())."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("qwen3-gguf", instructions=(
        "Search a collection of the user's files by meaning (and by keyword where the collection offers it); "
        "`search` gives the best chunks with their paths and offsets, `get` reads a file or chunk, `status` "
        "says what the collection holds."))

    @server.tool(description="Find the chunks of the collection that best answer a query, best first.")
    async def search(
        query: Annotated[str, Field(description="What to look for, in words.")],
        k: Annotated[int, Field(ge=1, le=MAX_K, description="How many hits.")] = 10,
        mode: Annotated[Literal[MODES] | None, Field(
            description="vector (by meaning), keyword (BM25) or hybrid (both, fused) "
                        "[default: the collection's default].")] = None,
        path_glob: Annotated[str | None, Field(description="Only files whose path matches, e.g. '*.md'.")] = None,
        min_score: Annotated[float | None, Field(description="Drop hits scoring below this.")] = None,
        rerank: Annotated[bool, Field(description="Rescore the candidates with the server's reranker.")] = False,
    ) -> list[Hit]:
        with _as_tool_errors():
            return tools.search(query, k=k, mode=mode, path_glob=path_glob, min_score=min_score, rerank=rerank)

    @server.tool(description="Read a file of the collection, or one chunk of it as PATH#CHUNK (paths as search "
                             "gives them), from a character offset.")
    async def get(
        target: Annotated[str, Field(description="A path, or PATH#CHUNK.")],
        offset: Annotated[int, Field(ge=0, description="Characters to skip.")] = 0,
        max_chars: Annotated[int, Field(ge=1, le=MAX_GET_CHARS, description="At most this much text.")] = 20_000,
    ) -> Passage:
        with _as_tool_errors():
            return tools.get(target, offset=offset, max_chars=max_chars)

    @server.tool(description="What the collection holds: files, chunks, model, dim, when it was last indexed.")
    async def status() -> Status:
        with _as_tool_errors():
            return tools.status()

    return server
